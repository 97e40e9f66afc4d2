"""Instruction grammar, chain feasibility and the judge."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hil.tasks import Step, explain_step, is_feasible, judge_step, make_chain, parse_instruction
from hil.world import BINS, COLOURS, TabletopWorld

NEUTRAL = {"red": (0.4, 0.4), "green": (0.6, 0.6), "blue": (0.1, 0.1), "yellow": (0.9, 0.9)}


def arranged(blocks: dict[str, tuple[float, float]], gripper=(0.5, 0.5)) -> TabletopWorld:
    world = TabletopWorld(0)
    world.arrange({**NEUTRAL, **blocks}, gripper=gripper)
    return world


def go(world: TabletopWorld, x: float, y: float, grip: float, ticks: int = 1) -> None:
    for _ in range(ticks):
        world.step(np.array([x, y, grip, 0.0], dtype=np.float32))


@pytest.mark.parametrize(("colour", "bin_name"), list(itertools.product(COLOURS, BINS)))
def test_instruction_round_trip(colour, bin_name):
    step = Step(colour, bin_name)
    assert step.instruction == f"put the {colour} block in the {bin_name} bin"
    assert parse_instruction(step.instruction) == step


def test_parse_forgives_case_and_spacing_only():
    assert parse_instruction("  Put the RED block   in the left bin ") == Step("red", "left")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "put the purple block in the left bin",
        "put the red block in the middle bin",
        "put the red block in the left box",
        "put the red block in the left bin please",
        "put red in left",
    ],
)
def test_parse_rejects_anything_else_with_the_grammar_in_the_message(text):
    with pytest.raises(ValueError, match="put the <colour> block in the <bin> bin"):
        parse_instruction(text)


def test_step_rejects_unknown_names():
    with pytest.raises(ValueError, match="colour"):
        Step("purple", "left")
    with pytest.raises(ValueError, match="bin"):
        Step("red", "middle")


def test_chains_are_seeded_and_always_feasible_when_executed_as_intended():
    world = TabletopWorld(5)
    assert make_chain(np.random.default_rng(1), world) == make_chain(np.random.default_rng(1), world)
    for seed in range(100):
        world = TabletopWorld(seed)
        chain = make_chain(np.random.default_rng(seed), world)
        assert len(chain) == 10
        intended = world.block_bins()
        for step in chain:
            assert intended[step.colour] != step.bin, (seed, step)
            intended[step.colour] = step.bin
    # Every colour and every bin gets asked for across chains.
    many = [s for seed in range(20) for s in make_chain(np.random.default_rng(seed), TabletopWorld(seed))]
    assert {s.colour for s in many} == set(COLOURS) and {s.bin for s in many} == set(BINS)


def test_first_step_of_a_chain_is_feasible_in_the_world():
    for seed in range(50):
        world = TabletopWorld(seed)
        assert is_feasible(world, make_chain(np.random.default_rng(seed), world, 1)[0])


def test_judge_passes_a_released_block_in_the_named_bin():
    world = arranged({"red": (0.1, 0.5)})
    assert judge_step(world, Step("red", "left"))
    assert judge_step(world, Step("red", "left"), world.block_bins())


def test_judge_fails_wrong_bin_no_bin_and_a_held_block():
    world = arranged({"red": (0.1, 0.5)}, gripper=(0.1, 0.5))
    assert not judge_step(world, Step("red", "right"))
    assert not judge_step(world, Step("green", "left"))  # green is in no bin
    go(world, 0.1, 0.5, grip=1.0)
    assert world.held_block() == "red"
    judgement = explain_step(world, Step("red", "left"))
    assert not judgement.success and "held" in judgement.reason


def test_judge_fails_when_another_block_was_knocked_out_of_its_bin():
    world = arranged({"red": (0.1, 0.4), "green": (0.5, 0.5)}, gripper=(0.5, 0.5))
    before = world.block_bins()
    assert before["red"] == "left"
    # Put green in the left bin, then shove red out of it with the closed, empty gripper.
    go(world, 0.5, 0.5, grip=1.0)
    go(world, 0.15, 0.68, grip=1.0, ticks=6)
    go(world, 0.15, 0.68, grip=0.0)
    go(world, 0.1, 0.52, grip=0.0, ticks=3)
    go(world, 0.1, 0.52, grip=1.0)
    go(world, 0.1, 0.05, grip=1.0, ticks=8)
    go(world, 0.5, 0.5, grip=0.0, ticks=6)
    assert world.block_bins()["green"] == "left"
    assert world.block_bins()["red"] != "left"
    judgement = explain_step(world, Step("green", "left"), before)
    assert not judgement.success and "red block was knocked out of the left bin" in judgement.reason
    assert judge_step(world, Step("green", "left"))  # without the before-picture, only the first two rules
