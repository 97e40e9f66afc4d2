"""Expert demonstrations in the reference world, as flat numpy arrays (one row per control tick).

Each chain is an episode; each step of it has frames 0..n-1 with the observation *before* the action. The
expert ends every step with ``done=1`` for a few ticks while holding still, so chunk targets built from the
actions of one step (padded with its last action) end in ``done``. Only steps the judge passes are kept.

    python -m hil.demos --chains 200 --out demos.npz
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hil.expert import ScriptedExpert
from hil.tasks import explain_step, make_chain
from hil.world import ACTION_DIM, IMAGE_SIZE, STATE_DIM, TabletopWorld

DEMOS_FORMAT_VERSION = 1
_STEP_TICK_LIMIT = 150  # the expert needs ~20-30 ticks; a step still going at this point has failed


@dataclass
class DemoSet:
    images: np.ndarray  # (N, 96, 96, 3) uint8
    states: np.ndarray  # (N, 3) float32
    actions: np.ndarray  # (N, 4) float32
    instructions: list[str]  # the distinct instructions; instruction_index points into it
    instruction_index: np.ndarray  # (N,) int64
    episode_index: np.ndarray  # (N,) int64: the chain
    step_index: np.ndarray  # (N,) int64: the step within its chain
    frame_index: np.ndarray  # (N,) int64: the tick within its step
    seed: int
    steps_attempted: int
    steps_dropped: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def instruction_of(self, row: int) -> str:
        return self.instructions[int(self.instruction_index[row])]

    def save(self, path: Path) -> None:
        """Write an ``.npz`` (compressed, no pickled objects), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as f:
            np.savez_compressed(
                f,
                format_version=np.int64(DEMOS_FORMAT_VERSION),
                images=self.images,
                states=self.states,
                actions=self.actions,
                instructions=np.array(self.instructions, dtype=np.str_),
                instruction_index=self.instruction_index,
                episode_index=self.episode_index,
                step_index=self.step_index,
                frame_index=self.frame_index,
                seed=np.int64(self.seed),
                steps_attempted=np.int64(self.steps_attempted),
                steps_dropped=np.int64(self.steps_dropped),
            )
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> DemoSet:
        """Read a file written by ``save``; a clear ValueError if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no demo file at {path}; make one with `python -m hil.demos --out {path}`")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} is not a demo file written by hil.demos: {error}") from error
        version = int(arrays.get("format_version", -1))
        if version != DEMOS_FORMAT_VERSION:
            raise ValueError(
                f"{path}: demo format version {version} is not supported (expected {DEMOS_FORMAT_VERSION})"
            )
        demos = cls(
            images=arrays["images"],
            states=arrays["states"],
            actions=arrays["actions"],
            instructions=[str(s) for s in arrays["instructions"]],
            instruction_index=arrays["instruction_index"],
            episode_index=arrays["episode_index"],
            step_index=arrays["step_index"],
            frame_index=arrays["frame_index"],
            seed=int(arrays["seed"]),
            steps_attempted=int(arrays["steps_attempted"]),
            steps_dropped=int(arrays["steps_dropped"]),
        )
        demos.validate()
        return demos

    def validate(self) -> None:
        n = len(self)
        expected = {
            "images": (self.images, (n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
            "states": (self.states, (n, STATE_DIM), np.float32),
            "actions": (self.actions, (n, ACTION_DIM), np.float32),
            "instruction_index": (self.instruction_index, (n,), np.int64),
            "episode_index": (self.episode_index, (n,), np.int64),
            "step_index": (self.step_index, (n,), np.int64),
            "frame_index": (self.frame_index, (n,), np.int64),
        }
        for name, (array, shape, dtype) in expected.items():
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(f"demo array {name} is {array.dtype}{array.shape}, expected {np.dtype(dtype)}{shape}")
        if n and (self.instruction_index.min() < 0 or self.instruction_index.max() >= len(self.instructions)):
            raise ValueError("demo instruction_index points outside the instruction list")


def generate_demos(
    n_chains: int,
    seed: int,
    out_path: Path | None = None,
    n_steps: int = 10,
    noise: float = 0.01,
    progress: Callable[[int], None] | None = None,
) -> DemoSet:
    """Expert rollouts of ``n_chains`` random chains on layouts drawn from ``seed``; failed steps are dropped.

    ``progress`` is called with the number of chains finished so far. Images take about 5.5 MB of memory per
    chain (~200 frames of 27.6 kB); the compressed file about 60 kB per chain.
    """
    if n_chains < 0:
        raise ValueError(f"n_chains must be >= 0, got {n_chains}")
    images: list[np.ndarray] = []
    states: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    rows: list[tuple[int, int, int, int]] = []  # instruction, episode, step, frame
    instruction_ids: dict[str, int] = {}
    attempted = dropped = 0
    for episode in range(n_chains):
        rng = np.random.default_rng([seed, episode])
        world = TabletopWorld(int(rng.integers(2**31)))
        expert = ScriptedExpert(rng, noise=noise)
        for step_number, step in enumerate(make_chain(rng, world, n_steps)):
            attempted += 1
            bins_before = world.block_bins()
            expert.reset(step)
            step_images, step_states, step_actions = [], [], []
            while not expert.finished and len(step_actions) < _STEP_TICK_LIMIT:
                step_images.append(world.render())
                step_states.append(world.state())
                action = expert.act(world)
                step_actions.append(action)
                world.step(action)
            if not (expert.finished and explain_step(world, step, bins_before).success):
                dropped += 1
                continue
            instruction = instruction_ids.setdefault(step.instruction, len(instruction_ids))
            images.extend(step_images)
            states.extend(step_states)
            actions.extend(step_actions)
            rows.extend((instruction, episode, step_number, frame) for frame in range(len(step_actions)))
        if progress is not None:
            progress(episode + 1)

    index = np.array(rows, dtype=np.int64).reshape(-1, 4)
    demos = DemoSet(
        images=np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
        states=np.stack(states) if states else np.zeros((0, STATE_DIM), np.float32),
        actions=np.stack(actions) if actions else np.zeros((0, ACTION_DIM), np.float32),
        instructions=list(instruction_ids),
        instruction_index=index[:, 0].copy(),
        episode_index=index[:, 1].copy(),
        step_index=index[:, 2].copy(),
        frame_index=index[:, 3].copy(),
        seed=seed,
        steps_attempted=attempted,
        steps_dropped=dropped,
    )
    demos.validate()
    if out_path is not None:
        demos.save(out_path)
    return demos


def load_demos(path: Path) -> DemoSet:
    return DemoSet.load(path)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    parser = argparse.ArgumentParser(prog="python -m hil.demos", description="Generate scripted-expert demos.")
    parser.add_argument("--chains", type=int, default=100, help="number of 10-step chains (episodes)")
    parser.add_argument("--out", type=Path, required=True, help="output .npz path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10, help="steps per chain")
    parser.add_argument("--noise", type=float, default=0.01, help="expert noise (workspace units)")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    if args.chains < 1:
        console.print(f"[red]--chains must be at least 1, got {args.chains}[/red]")
        return 2

    started = time.monotonic_ns()
    with Progress(
        TextColumn("demos"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as bar:
        task = bar.add_task("chains", total=args.chains)
        demos = generate_demos(
            args.chains,
            args.seed,
            n_steps=args.steps,
            noise=args.noise,
            progress=lambda done: bar.update(task, completed=done),
        )
    generated_s = (time.monotonic_ns() - started) / 1e9
    try:
        demos.save(args.out)
    except OSError as error:
        console.print(f"[red]cannot write {args.out}: {error}[/red]")
        return 1
    total_s = (time.monotonic_ns() - started) / 1e9
    console.print(
        f"{len(demos)} frames from {demos.steps_attempted - demos.steps_dropped}/{demos.steps_attempted} steps "
        f"({demos.steps_dropped} failed expert steps dropped); {len(demos) / generated_s:.0f} frames/s generated, "
        f"{total_s:.1f} s with saving -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
