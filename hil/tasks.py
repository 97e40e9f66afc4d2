"""Instructions, task chains and the judge of the reference world.

Grammar: ``"put the {colour} block in the {bin} bin"``. A step is feasible when its block is not already in
its bin. A step succeeded iff, at its end, the named block's centre is inside the named bin, the block is not
held, and no other block that was in a bin before the step has been knocked out of that bin.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hil.world import BINS, COLOURS, TabletopWorld, bin_of

_INSTRUCTION = re.compile(
    rf"put the (?P<colour>{'|'.join(COLOURS)}) block in the (?P<bin>{'|'.join(BINS)}) bin"
)


@dataclass(frozen=True)
class Step:
    colour: str
    bin: str

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown block colour {self.colour!r}; expected one of {', '.join(COLOURS)}")
        if self.bin not in BINS:
            raise ValueError(f"unknown bin {self.bin!r}; expected one of {', '.join(BINS)}")

    @property
    def instruction(self) -> str:
        return f"put the {self.colour} block in the {self.bin} bin"


def parse_instruction(text: str) -> Step:
    """The step an instruction names. Case and surrounding/extra spaces are forgiven; nothing else is."""
    normalised = " ".join(text.strip().lower().split())
    match = _INSTRUCTION.fullmatch(normalised)
    if match is None:
        raise ValueError(
            f"cannot parse instruction {text!r}: expected 'put the <colour> block in the <bin> bin' with colour "
            f"one of {', '.join(COLOURS)} and bin one of {', '.join(BINS)}"
        )
    return Step(colour=match["colour"], bin=match["bin"])


def make_chain(rng: np.random.Generator, world: TabletopWorld, n_steps: int = 10) -> list[Step]:
    """``n_steps`` random steps, each feasible in the state the previous steps leave when done as intended."""
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    where = world.block_bins()
    chain: list[Step] = []
    for _ in range(n_steps):
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        choices = [b for b in BINS if b != where[colour]]
        target = choices[int(rng.integers(len(choices)))]
        chain.append(Step(colour, target))
        where[colour] = target
    return chain


def is_feasible(world: TabletopWorld, step: Step) -> bool:
    return world.block_bins()[step.colour] != step.bin


@dataclass(frozen=True)
class Judgement:
    success: bool
    reason: str  # empty on success; otherwise what was wrong, for logs and reports


def explain_step(world: TabletopWorld, step: Step, bins_before: Mapping[str, str | None] | None = None) -> Judgement:
    """Judge a finished step and say why it failed. ``bins_before`` is ``world.block_bins()`` taken before it."""
    if world.held_block() == step.colour:
        return Judgement(False, f"the {step.colour} block is still held")
    landed = bin_of(world.block_position(step.colour))
    if landed != step.bin:
        return Judgement(False, f"the {step.colour} block is in {_describe(landed)}, not the {step.bin} bin")
    if bins_before is not None:
        now = world.block_bins()
        for colour, was in bins_before.items():
            if colour != step.colour and was is not None and now[colour] != was:
                return Judgement(False, f"the {colour} block was knocked out of the {was} bin")
    return Judgement(True, "")


def judge_step(world: TabletopWorld, step: Step, bins_before: Mapping[str, str | None] | None = None) -> bool:
    """Whether a finished step succeeded (see the module docstring). Without ``bins_before`` the third rule
    (no other block knocked out of its bin) is not checked."""
    return explain_step(world, step, bins_before).success


def _describe(bin_name: str | None) -> str:
    return "no bin" if bin_name is None else f"the {bin_name} bin"
