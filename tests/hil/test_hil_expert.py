"""The scripted expert: success rate, step length, the shape of its actions, and repairing messy states."""

from __future__ import annotations

import numpy as np
import pytest

from hil.expert import ScriptedExpert
from hil.tasks import Step, explain_step, make_chain
from hil.world import MAX_STEP, TabletopWorld


def run_expert(world: TabletopWorld, expert: ScriptedExpert, step: Step, limit: int = 150) -> list[np.ndarray]:
    expert.reset(step)
    actions = []
    while not expert.finished and len(actions) < limit:
        action = expert.act(world)
        actions.append(action)
        world.step(action)
    return actions


def test_expert_solves_at_least_99_percent_of_300_steps_in_about_20_ticks_each():
    successes, ticks, failures = 0, [], []
    for seed in range(30):
        rng = np.random.default_rng([seed, 1])
        world = TabletopWorld(seed + 1000)
        expert = ScriptedExpert(rng)
        for step in make_chain(rng, world):
            before = world.block_bins()
            actions = run_expert(world, expert, step)
            judgement = explain_step(world, step, before)
            successes += judgement.success
            ticks.append(len(actions))
            if not judgement.success:
                failures.append((seed, step, judgement.reason))
    assert len(ticks) == 300
    assert successes / 300 >= 0.99, failures
    assert 15 <= np.mean(ticks) <= 45 and max(ticks) < 80


def test_expert_actions_respect_the_speed_limit_and_end_with_done_ticks_holding_still():
    rng = np.random.default_rng(3)
    world = TabletopWorld(3)
    expert = ScriptedExpert(rng, done_ticks=3)
    for step in make_chain(rng, world, 3):
        state = world.state()
        expert.reset(step)
        actions = []
        while not expert.finished:
            action = expert.act(world)
            assert action.dtype == np.float32 and action.shape == (4,)
            assert np.linalg.norm(action[:2] - state[:2]) <= MAX_STEP + 1e-6
            assert action[2] in (0.0, 1.0) and action[3] in (0.0, 1.0)
            world.step(action)
            actions.append(action)
            state = world.state()
        done = np.array([a[3] for a in actions])
        np.testing.assert_array_equal(done, [0.0] * (len(actions) - 3) + [1.0] * 3)
        for a in actions[-3:]:
            np.testing.assert_array_equal(a[:3], actions[-1][:3])
        assert actions[-1][2] == 0.0  # released


def test_expert_finishes_a_step_a_policy_left_in_a_mess():
    # Holding the wrong block, far away.
    world = TabletopWorld(0)
    world.arrange({"red": (0.4, 0.4), "green": (0.6, 0.6), "blue": (0.1, 0.1), "yellow": (0.9, 0.9)}, (0.6, 0.6))
    world.step(np.array([0.6, 0.6, 1.0, 0.0], dtype=np.float32))
    assert world.held_block() == "green"
    step = Step("red", "bottom")
    run_expert(world, ScriptedExpert(np.random.default_rng(0)), step)
    assert explain_step(world, step).success and world.held_block() is None

    # Gripper closed on nothing right next to the block.
    world.arrange({"red": (0.4, 0.4)}, gripper=(0.4 + 0.06, 0.4), grip_closed=True)
    step = Step("red", "top")
    run_expert(world, ScriptedExpert(np.random.default_rng(1)), step)
    assert explain_step(world, step).success


def test_expert_fills_a_bin_without_knocking_blocks_out():
    rng = np.random.default_rng(9)
    world = TabletopWorld(0)
    world.arrange({"red": (0.4, 0.4), "green": (0.6, 0.6), "blue": (0.1, 0.1), "yellow": (0.9, 0.9)})
    expert = ScriptedExpert(rng)
    for colour in ("red", "green", "blue", "yellow"):
        step = Step(colour, "right")
        before = world.block_bins()
        run_expert(world, expert, step)
        assert explain_step(world, step, before).success, colour
    assert set(world.block_bins().values()) == {"right"}


def test_expert_needs_a_step_and_sane_settings():
    with pytest.raises(RuntimeError, match="reset"):
        ScriptedExpert(np.random.default_rng(0)).act(TabletopWorld(0))
    with pytest.raises(ValueError):
        ScriptedExpert(np.random.default_rng(0), noise=-1)
    with pytest.raises(ValueError):
        ScriptedExpert(np.random.default_rng(0), done_ticks=0)
