"""Chunk-boundary handling and sample selection, measured in closed loop on the reference world.

The scheduler replans every few ticks. How the new chunk meets the one still executing is a setting
(``scheduler.boundary``): ``none`` (the new chunk takes over), ``freeze`` (condition the new chunk on the
action that runs while inference is in flight, real-time-chunking style inpainting) or ``blend`` (cross-fade
over three ticks). The executor picks one of K samples (the medoid). This script measures per-step success of
each choice with the same chains and seeds, so the defaults are chosen by evidence.

    python -m bench.boundary_modes --chains 10 --precision int8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from hil.rollout import evaluate, summarise
from vla_edge.bundle import load_bundle
from vla_edge.confidence import select_chunk
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.policy import PolicyRunner

EXECUTE = 4  # actions executed per chunk, as the scheduler with replan_when_remaining=4 and H=8 does
BLEND_STEPS = 3


class ScheduledPolicy:
    """A chunk policy for `hil.rollout` that mirrors the scheduler's boundary handling and sample choice."""

    def __init__(self, runner: PolicyRunner, samples: int, boundary: str) -> None:
        self.runner = runner
        self.samples = samples
        self.boundary = boundary
        self.previous: np.ndarray | None = None
        self.instruction = ""

    def __call__(self, image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
        if instruction != self.instruction:  # a new step starts from an empty timeline
            self.previous, self.instruction = None, instruction
        # The action due now, from the chunk still executing (it runs while this one is computed).
        running = None if self.previous is None else self.previous[EXECUTE : EXECUTE + 1]
        prefix = running if self.boundary == "freeze" else None
        actions = self.runner.infer(image, state, instruction, self.samples, prefix=prefix).actions
        chunk = (select_chunk(actions) if self.samples > 1 else actions[0]).copy()
        if self.boundary == "blend" and self.previous is not None:
            for i in range(BLEND_STEPS):
                weight = (i + 1) / (BLEND_STEPS + 1)
                chunk[i] = (1.0 - weight) * self.previous[EXECUTE + i] + weight * chunk[i]
        self.previous = chunk
        return chunk


def run(bundle: Path, precision: str, chains: int, seed: int) -> list[dict]:
    runner = PolicyRunner(load_bundle(bundle), precision, intra_op_threads=2)
    rows = []
    for samples, boundary in [(1, "none"), (8, "none"), (8, "freeze"), (8, "blend")]:
        summary = summarise(evaluate(ScheduledPolicy(runner, samples, boundary), n_chains=chains, seed=seed))
        rows.append({"samples": samples, "boundary": boundary, **summary})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.boundary_modes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE_DIR)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--chains", type=int, default=10)
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = run(args.bundle, args.precision, args.chains, args.seed)
    table = Table(title=f"boundary handling, {args.chains} chains × 10 steps, {args.precision}")
    for column in ("samples", "boundary", "per-step success", "chain success", "mean ticks/step"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["samples"]), row["boundary"], f"{row['step_success']:.1%}",
                      f"{row['chain_success']:.1%}", f"{row['mean_ticks']:.1f}")
    Console().print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
