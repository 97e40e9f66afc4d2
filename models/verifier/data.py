"""Training and calibration data for the checkpoint verifier, from the reference world.

The policy runs autonomously on chains of the reference world with the robot's own executor (``vla_edge.simulation``:
the same loop, simulated time). At every step boundary we keep what the robot's camera shows and, for the labels
only, where the simulator says the blocks are. A *window* is a run of consecutive steps ``k..m`` (1 to
``MAX_STEPS`` of them, as between two checkpoints or for one step): its input is the frame before step ``k``, the
frame after step ``m`` and the instructions of ``k..m``; its label is whether the scene is as those instructions
should have left it (`as_expected`).

Real policy failures are rare (a few in a hundred steps), so each step's end scene is also perturbed once the way
failures look (the named block in another bin, on the table outside any bin, still held; another block knocked out
of its bin): those frames get the same rule's label. Training adds instruction swaps on the fly (``net.py``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hil.tasks import parse_instruction
from hil.world import BIN_RECTS, BINS, COLOURS, TabletopWorld
from vla_edge.confidence import ConfidenceMonitor
from vla_edge.executor import ExecutorSettings
from vla_edge.policy import PolicyRunner
from vla_edge.simulation import chain_setup, robot_for

MAX_STEPS = 5  # the longest segment a checkpoint covers (task.checkpoint_every is 3..5)
PERTURBATIONS = ("wrong_bin", "on_table", "held", "knocked_out")


@dataclass
class Scene:
    """One frame and, for labels only, the simulator's bins and held block at that moment."""

    frame: np.ndarray
    bins: dict[str, str | None]
    held: str | None


@dataclass
class ChainRecord:
    """Scenes of one chain: ``starts[k]`` before step ``k``; ``ends[k]`` after the policy's attempt at step ``k``
    (before any repair); ``perturbed[k]``: ``ends[k]`` changed the way a failure looks (or None)."""

    seed: int
    index: int
    instructions: list[str]
    starts: list[Scene] = field(default_factory=list)
    ends: list[Scene] = field(default_factory=list)
    perturbed: list[Scene | None] = field(default_factory=list)
    policy_failed: list[bool] = field(default_factory=list)


def expected_bins(start_bins: dict[str, str | None], instructions: tuple[str, ...]) -> dict[str, str]:
    """Where the blocks should be after ``instructions`` from a scene with ``start_bins``: every block that was in a
    bin stays there unless an instruction moves it; the last instruction naming a block wins."""
    want = {colour: where for colour, where in start_bins.items() if where is not None}
    for text in instructions:
        step = parse_instruction(text)
        want[step.colour] = step.bin
    return want


def as_expected(start: Scene, instructions: tuple[str, ...], end: Scene) -> bool:
    """The label: nothing held, and every block that should be in a bin is in that bin."""
    if end.held is not None:
        return False
    return all(end.bins[colour] == where for colour, where in expected_bins(start.bins, instructions).items())


def _scene(world: TabletopWorld, frame: np.ndarray | None = None) -> Scene:
    return Scene(world.render() if frame is None else frame, world.block_bins(), world.held_block())


def _free_point(world: TabletopWorld, rng: np.random.Generator, inside: str | None) -> tuple[float, float]:
    """A point away from the other blocks: inside bin ``inside``, or on the table outside every bin."""
    from hil.world import bin_of

    others = [world.block_position(c) for c in COLOURS]
    for _ in range(200):
        if inside is None:
            point = rng.uniform(0.12, 0.88, size=2)
            if bin_of(point) is not None:
                continue
        else:
            rect = BIN_RECTS[inside]
            point = np.array([rng.uniform(rect.x0 + 0.04, rect.x1 - 0.04), rng.uniform(rect.y0 + 0.04, rect.y1 - 0.04)])
        if all(np.linalg.norm(point - other) > 0.09 for other in others):
            return float(point[0]), float(point[1])
    return float(point[0]), float(point[1])


def perturb(world: TabletopWorld, instruction: str, rng: np.random.Generator) -> Scene | None:
    """The scene now, changed as a failed step would leave it (the world is put back afterwards)."""
    snapshot = world.snapshot()
    step = parse_instruction(instruction)
    kind = PERTURBATIONS[int(rng.integers(len(PERTURBATIONS)))]
    gripper = tuple(float(v) for v in world.gripper_position())
    try:
        if kind == "wrong_bin":
            other = [b for b in BINS if b != step.bin][int(rng.integers(len(BINS) - 1))]
            world.arrange({step.colour: _free_point(world, rng, other)}, gripper=gripper)
        elif kind == "on_table":
            world.arrange({step.colour: _free_point(world, rng, None)}, gripper=gripper)
        elif kind == "held":
            here = world.block_position(step.colour)
            world.arrange({}, gripper=(float(here[0]), float(here[1])))
            world.step(np.array([here[0], here[1], 1.0, 0.0], dtype=np.float32))
        else:  # knocked_out: another block that sits in a bin leaves it
            binned = [c for c, b in world.block_bins().items() if b is not None and c != step.colour]
            if not binned:
                return None
            victim = binned[int(rng.integers(len(binned)))]
            world.arrange({victim: _free_point(world, rng, None)}, gripper=gripper)
        return _scene(world)
    finally:
        world.restore(snapshot)


def roll_out(seed: int, index: int, runner: PolicyRunner, monitor: ConfidenceMonitor | None,
             settings: ExecutorSettings, perturb_rng: np.random.Generator) -> ChainRecord:
    """The policy alone on chain ``index`` of seed root ``seed`` (the executor in shadow mode, every chunk
    actuated); failed steps are repaired by the scripted expert so the next one starts where the chain expects."""
    from dataclasses import replace

    setup = chain_setup(seed, index)
    robot = robot_for(setup, runner, monitor, replace(settings, gate=False, resample_tries=0))
    record = ChainRecord(seed, index, [s.instruction for s in setup.chain])
    stop = threading.Event()
    try:
        for k, step in enumerate(setup.chain):
            robot.bins_before[k] = robot.world.block_bins()
            record.starts.append(_scene(robot.world, robot.latest_frame()))
            report = robot.run_step(k, step.instruction, stop)
            # The frame the task runner's verifier gets (it shows the done action executed), and the world with it.
            record.ends.append(_scene(robot.world, report.frame))
            failed = not robot.runs[-1].success
            record.policy_failed.append(failed)
            record.perturbed.append(None if failed else perturb(robot.world, step.instruction, perturb_rng))
            if failed:
                robot.repair(k, step, driver="measurement_repair")
    finally:
        robot.close()
    return record


@dataclass(frozen=True)
class Window:
    chain: int  # index into the list of ChainRecords
    first: int
    last: int
    perturbed: bool


def windows(records: list[ChainRecord], max_steps: int = MAX_STEPS) -> list[Window]:
    """Every run of 1..max_steps consecutive steps of every chain, on the real end scene and on the perturbed one."""
    out = []
    for c, record in enumerate(records):
        for last in range(len(record.instructions)):
            for first in range(max(0, last - max_steps + 1), last + 1):
                out.append(Window(c, first, last, False))
                if record.perturbed[last] is not None:
                    out.append(Window(c, first, last, True))
    return out


def window_scenes(records: list[ChainRecord], window: Window) -> tuple[Scene, Scene, tuple[str, ...]]:
    record = records[window.chain]
    end = record.perturbed[window.last] if window.perturbed else record.ends[window.last]
    assert end is not None
    return record.starts[window.first], end, tuple(record.instructions[window.first : window.last + 1])


def checkpoint_windows(records: list[ChainRecord], every: int = 4) -> list[Window]:
    """What the task runner verifies with checkpoint_every = ``every``: each single step, and each segment."""
    out = []
    for c, record in enumerate(records):
        n = len(record.instructions)
        out += [Window(c, k, k, False) for k in range(n)]
        out += [Window(c, start, min(start + every, n) - 1, False) for start in range(0, n, every)]
    return out


def save(records: list[ChainRecord], path: Path) -> None:
    """Plain arrays (no pickle): frames, bins as indices (-1: none), held as an index (-1: none)."""
    frames, bins, held, kinds, keys = [], [], [], [], []
    meta = []
    for c, record in enumerate(records):
        meta.append({"seed": record.seed, "index": record.index, "instructions": record.instructions,
                     "policy_failed": record.policy_failed})
        for kind, scenes in (("start", record.starts), ("end", record.ends), ("perturbed", record.perturbed)):
            for k, scene in enumerate(scenes):
                if scene is None:
                    continue
                frames.append(scene.frame)
                bins.append([BINS.index(scene.bins[col]) if scene.bins[col] else -1 for col in COLOURS])
                held.append(COLOURS.index(scene.held) if scene.held else -1)
                kinds.append(("start", "end", "perturbed").index(kind))
                keys.append((c, k))
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, frames=np.stack(frames), bins=np.asarray(bins, np.int8), held=np.asarray(held, np.int8),
                        kinds=np.asarray(kinds, np.int8), keys=np.asarray(keys, np.int32),
                        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def load(path: Path) -> list[ChainRecord]:
    import json

    data = np.load(path, allow_pickle=False)
    meta = json.loads(data["meta"].tobytes().decode())
    records = [ChainRecord(m["seed"], m["index"], m["instructions"], policy_failed=m["policy_failed"]) for m in meta]
    for record in records:
        n = len(record.instructions)
        record.starts, record.ends, record.perturbed = [None] * n, [None] * n, [None] * n  # type: ignore[list-item]
    for frame, bins, held, kind, (c, k) in zip(data["frames"], data["bins"], data["held"], data["kinds"], data["keys"],
                                               strict=True):
        scene = Scene(frame, {col: (BINS[b] if b >= 0 else None) for col, b in zip(COLOURS, bins, strict=True)},
                      COLOURS[held] if held >= 0 else None)
        getattr(records[c], ("starts", "ends", "perturbed")[kind])[k] = scene
    return records
