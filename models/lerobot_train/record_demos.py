"""Scripted-expert demonstrations of the reference world, recorded as a LeRobot v3.0 dataset by vla-edge's recorder.

    python -m models.lerobot_train.record_demos --chains 300 --recovery-chains 100 --out artifacts/lerobot/demos

One episode per task step (as the daemon records), with the step's instruction as its task. Features are the
ones the daemon records on the reference world (`FEATURES`): the 96×96 camera view, ``observation.state``
[gripper_x, gripper_y, grip], ``action`` [target_x, target_y, grip, done], ``actual`` (what the simulated
controller reports after the tick: [gripper_x, gripper_y, grip, done]) and ``observation.environment_state``, one
0/1 value per instruction word (colour and bin), because ACT and Diffusion Policy have no language model.

Steps the expert fails are discarded. ``--recovery-chains`` adds DART-style chains (as the reference model's
recipe does): now and then a perturbation is executed instead of the expert's command (an early grip close, an
early release, a missed target) and the episode records the **expert's** command as ``action`` for the state
the perturbation led to, so the policy also sees how to recover; ``actual`` shows what was executed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from hil.expert import ScriptedExpert
from hil.tasks import explain_step, make_chain
from hil.world import BINS, COLOURS, CONTROL_RATE_HZ, TabletopWorld
from vla_edge.recorder import CameraView, EpisodeRecorder, RecorderError, RecordingFeatures

FEATURES = RecordingFeatures(
    views=(CameraView("observation.image", 96, 96),),
    state_names=("gripper_x", "gripper_y", "grip"),
    action_names=("target_x", "target_y", "grip", "done"),
    actual_names=("gripper_x", "gripper_y", "grip", "done"),
    instruction_words=(*COLOURS, *BINS),
)
STEP_TICK_LIMIT = 150


def record(recorder: EpisodeRecorder, chains: int, seed: int, perturb: float, label: str) -> tuple[int, int]:
    """Record ``chains`` ten-step chains; returns (steps recorded, steps the expert failed)."""
    kept = failed = 0
    for chain in range(chains):
        rng = np.random.default_rng([seed, chain] if perturb == 0 else [seed, chain, 7])
        world = TabletopWorld(int(rng.integers(2**31)))
        expert = ScriptedExpert(rng)
        for step in make_chain(rng, world, 10):
            bins_before = world.block_bins()
            expert.reset(step)
            ticks = 0
            while not expert.finished and ticks < STEP_TICK_LIMIT:
                image, state = world.render(), world.state()
                command = expert.act(world)
                executed = _perturbed(world, command, rng) if perturb and rng.random() < perturb else command
                world.step(executed)
                actual = np.concatenate([world.state(), [executed[3]]])
                recorder.add_frame(image, state, command, False, step.instruction, actual=actual)
                ticks += 1
            if expert.finished and explain_step(world, step, bins_before).success:
                recorder.end_episode(success=True)
                kept += 1
            else:
                recorder.discard_episode()
                failed += 1
        print(f"\r{label}: {chain + 1}/{chains} chains, {kept} steps", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return kept, failed


def _perturbed(world: TabletopWorld, command: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference recipe's perturbations (models.reference.data.generate_recovery_demos)."""
    executed = command.copy()
    if command[3] >= 0.5:
        return executed
    here = world.gripper_position()
    kind = rng.integers(3)
    if kind == 0 and world.held_block() is None:
        executed[:2] = here + rng.normal(0.0, 0.03, size=2)
        executed[2] = 1.0
    elif kind == 1 and world.held_block() is not None:
        executed[:2] = here
        executed[2] = 0.0
    else:
        executed[:2] = command[:2] + rng.normal(0.0, 0.05, size=2)
    executed[:2] = np.clip(executed[:2], 0.0, 1.0)
    return executed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.lerobot_train.record_demos", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="dataset directory (created; must not exist)")
    parser.add_argument("--chains", type=int, default=300, help="plain expert chains (10 steps each)")
    parser.add_argument("--recovery-chains", type=int, default=100, help="chains with executed perturbations")
    parser.add_argument("--perturb", type=float, default=0.1, help="share of recovery-chain ticks perturbed")
    parser.add_argument("--seed", type=int, default=0, help="layouts and chains (the reference model used 0)")
    args = parser.parse_args(argv)
    if args.chains < 0 or args.recovery_chains < 0 or args.chains + args.recovery_chains == 0:
        print("record_demos: --chains and --recovery-chains must be >= 0, and not both 0", file=sys.stderr)
        return 2
    if args.out.exists():
        print(f"record_demos: {args.out} exists; give a new directory", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        # the robot type the daemon records (the default): LeRobot merges only datasets of one robot type, and the
        # take-overs the daemon records are merged into these demonstrations (docs/lerobot.md)
        recorder = EpisodeRecorder(args.out, int(CONTROL_RATE_HZ), FEATURES, durable=False)
        kept, failed = record(recorder, args.chains, args.seed, 0.0, "demos")
        if args.recovery_chains:
            more, more_failed = record(recorder, args.recovery_chains, args.seed, args.perturb, "recovery")
            kept, failed = kept + more, failed + more_failed
    except (RecorderError, OSError) as exc:
        print(f"record_demos: {exc}", file=sys.stderr)
        return 1
    print(f"{kept} episodes ({failed} failed expert steps dropped), {recorder.layout.total_frames} frames, "
          f"{time.monotonic() - started:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
