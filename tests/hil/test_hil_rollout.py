"""Closed-loop rollouts of chunk policies: the expert as a chunk policy, failures, repair, bad policies."""

from __future__ import annotations

import numpy as np
import pytest

from hil.expert import ExpertChunkPolicy, ScriptedExpert
from hil.rollout import evaluate, run_chain, run_step, summarise
from hil.tasks import Step, make_chain, parse_instruction
from hil.world import TabletopWorld


def staying_policy(image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
    """Never moves, never says done."""
    return np.tile(np.array([state[0], state[1], 0.0, 0.0], dtype=np.float32), (8, 1))


def test_expert_as_a_chunk_policy_succeeds_on_at_least_99_percent_of_steps():
    results = evaluate(lambda world: ExpertChunkPolicy(world, np.random.default_rng(0)), 12, seed=4, needs_world=True)
    figures = summarise(results)
    assert figures["steps"] == 120
    assert figures["step_success"] >= 0.99, [s for c in results for s in c.steps if not s.success]
    assert figures["done_rate"] == 1.0 and 10 <= figures["mean_ticks"] <= 45


def test_a_repeating_expert_wrapper_also_works_with_execute_1():
    """The simplest wrapper: the expert's action for now, repeated H times; only the first is executed."""
    world = TabletopWorld(21)
    chain = make_chain(np.random.default_rng(21), world)
    expert = ScriptedExpert(np.random.default_rng(22))

    def repeating(image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
        step = parse_instruction(instruction)
        if expert.step != step:
            expert.reset(step)
        return np.tile(expert.act(world), (8, 1))

    result = run_chain(world, chain, repeating, execute=1)
    assert result.step_success_rate == 1.0 and all(s.done_signalled for s in result.steps)


def test_policy_calls_follow_the_receding_horizon():
    world = TabletopWorld(2)
    calls = []
    policy = ExpertChunkPolicy(world, np.random.default_rng(0))

    def counting(image, state, instruction):
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and state.shape == (3,)
        calls.append(instruction)
        return policy(image, state, instruction)

    step = make_chain(np.random.default_rng(2), world, 1)[0]
    result = run_step(world, step, counting, execute=3)
    assert result.success and result.done_signalled
    assert len(calls) == -(-result.ticks // 3) and set(calls) == {step.instruction}


def test_a_stuck_policy_times_out_fails_and_the_expert_repairs_the_step():
    world = TabletopWorld(6)
    chain = make_chain(np.random.default_rng(6), world, 3)
    result = run_chain(world, chain, staying_policy, max_ticks=20)
    assert len(result.steps) == 3 and not result.chain_success and result.step_success_rate == 0.0
    for step_result in result.steps:
        assert step_result.ticks == 20 and not step_result.done_signalled
        assert "no done signal within 20 ticks" in step_result.reason
        assert step_result.repaired and step_result.repair_succeeded
    # After the repairs the world is where the chain meant it to be.
    assert world.block_bins()[chain[-1].colour] == chain[-1].bin


def test_stop_after_first_failure_when_asked():
    world = TabletopWorld(6)
    chain = make_chain(np.random.default_rng(6), world, 3)
    result = run_chain(world, chain, staying_policy, max_ticks=8, continue_after_failure=False)
    assert len(result.steps) == 1 and not result.steps[0].repaired


def test_saying_done_without_doing_anything_fails_with_a_reason():
    world = TabletopWorld(8)
    step = make_chain(np.random.default_rng(8), world, 1)[0]

    def lazy(image, state, instruction):
        return np.tile(np.array([state[0], state[1], 0.0, 1.0], dtype=np.float32), (8, 1))

    result = run_step(world, step, lazy)
    assert result.done_signalled and result.ticks == 1 and not result.success
    assert step.colour in result.reason


@pytest.mark.parametrize(
    "chunk",
    [np.zeros((8, 3), np.float32), np.zeros((4,), np.float32), np.zeros((0, 4), np.float32)],
)
def test_a_policy_returning_the_wrong_shape_is_reported(chunk):
    with pytest.raises(ValueError, match="chunk of shape"):
        run_step(TabletopWorld(0), Step("red", "left"), lambda image, state, instruction: chunk)


def test_a_policy_returning_nan_is_refused():
    nan_chunk = np.full((8, 4), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        run_step(TabletopWorld(0), Step("red", "left"), lambda image, state, instruction: nan_chunk)


def test_evaluate_is_reproducible_from_its_seed():
    a = evaluate(staying_policy, 2, seed=3, max_ticks=4, n_steps=3)
    b = evaluate(staying_policy, 2, seed=3, max_ticks=4, n_steps=3)
    c = evaluate(staying_policy, 2, seed=4, max_ticks=4, n_steps=3)
    steps = lambda results: [s.step for chain in results for s in chain.steps]  # noqa: E731
    assert steps(a) == steps(b) and steps(a) != steps(c)
