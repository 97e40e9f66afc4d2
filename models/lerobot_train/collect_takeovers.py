"""Run ten-step chains with the real daemon on a bundle, an operator taking over what the policy cannot do, and
record everything as a LeRobot dataset; then list the operator's take-over episodes (the training data).

    python -m models.lerobot_train.collect_takeovers --bundle BUNDLE --chains 20 --seed 4000 \\
        --out artifacts/lerobot/daemon-runs

Real processes and sockets: the simulated robot (`hil.harness.SimRobotProcess`: the pymunk world behind the real
controller client, its camera stream), the daemon (`vla_edge.service.Daemon`: camera → policy → confidence gate →
scheduler → ZeroMQ stream, task runner with checkpoints, recorder) and a simulated operator at the console
(`hil.harness.SimulatedOperator`): on a refused chunk, a stalled step or a failed checkpoint verification it takes
over and drives the step to its end with the scripted expert's moves through the teleop channel. Each step
attempt is one episode; a take-over is an episode of its own with every frame flagged ``intervention``.

The dataset has the features of `models.lerobot_train.record_demos` (same names, views, instruction words), so
LeRobot's own ``lerobot-edit-dataset`` can merge its take-over episodes into the demonstrations. The script
writes ``<out>/takeovers.json``: the take-over episodes and the others (to delete before merging).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hil.harness import SimRobotProcess, run_task_with_simulated_operator
from models.lerobot_train.record_demos import FEATURES
from vla_edge.config import load_settings
from vla_edge.errors import VlaEdgeError
from vla_edge.service import Daemon


def settings_for(robot: SimRobotProcess, bundle: Path, out: Path, state_dir: Path, precision: str):
    ports = robot.ports
    return load_settings(None, **{
        "camera": {"source": "sim", "sim_endpoint": ports.endpoint(ports.frames)},
        "stream": {"command_endpoint": ports.endpoint(ports.commands), "state_endpoint": ports.endpoint(ports.state),
                   "curve": False},
        "policy": {"bundle": str(bundle), "precision": precision},
        "task": {"state_dir": str(state_dir), "verify_at_checkpoint": True},
        "operator": {"enabled": False},
        "telemetry": {"metrics_port": 0},
        "recorder": {"enabled": True, "dataset_dir": str(out), "state_names": list(FEATURES.state_names),
                     "actual_names": list(FEATURES.actual_names),
                     "instruction_words": list(FEATURES.instruction_words)},
    })


def takeover_episodes(dataset: Path) -> tuple[list[int], list[int]]:
    """(episodes with operator frames, the others) from the dataset's episode rows."""
    import pyarrow.parquet as pq

    rows = [r for p in sorted(dataset.glob("meta/episodes/*/*.parquet"))
            for r in pq.read_table(p, columns=["episode_index", "intervention_frames"]).to_pylist()]
    takeovers = [int(r["episode_index"]) for r in rows if r["intervention_frames"] > 0]
    others = [int(r["episode_index"]) for r in rows if r["intervention_frames"] == 0]
    return takeovers, others


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.lerobot_train.collect_takeovers",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="dataset directory (new, or one to append to)")
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--seed", type=int, default=4000, help="chain layouts (seed root; docs/evaluation-seeds.md)")
    parser.add_argument("--precision", choices=["fp32", "int8", "int4"], default="int8")
    args = parser.parse_args(argv)
    if args.chains < 1:
        print("collect_takeovers: --chains must be at least 1", file=sys.stderr)
        return 2
    started = time.monotonic()
    steps = autonomous = succeeded = 0
    try:
        for chain in range(args.chains):
            layout = int(np.random.default_rng([args.seed, chain]).integers(2**31))
            with SimRobotProcess(seed=layout) as robot:
                sim = robot.channel()
                settings = settings_for(robot, args.bundle, args.out, args.out.parent / f".state-{args.out.name}",
                                        args.precision)
                with Daemon(settings) as daemon:
                    if not (daemon.wait_for_controller(30.0) and daemon.wait_for_camera(30.0)):
                        print(f"chain {chain}: the simulated robot did not come up", file=sys.stderr)
                        return 1
                    instructions = sim.chain(10, seed=layout)
                    _, judge = run_task_with_simulated_operator(daemon, sim, f"takeovers-{args.seed}-{chain}",
                                                                instructions)
                sim.close()
            steps += len(judge.outcomes)
            succeeded += sum(ok for ok, _ in judge.outcomes.values())
            autonomous += sum(judge.autonomous.get(i, False) and judge.outcomes[i][0] for i in judge.outcomes)
            print(f"\rchain {chain + 1}/{args.chains}: {autonomous}/{steps} steps done by the policy alone",
                  end="", file=sys.stderr, flush=True)
    except VlaEdgeError as exc:
        print(f"\ncollect_takeovers: {exc}", file=sys.stderr)
        return 1
    print(file=sys.stderr)
    takeovers, others = takeover_episodes(args.out)
    (args.out / "takeovers.json").write_text(json.dumps({"takeover_episodes": takeovers, "other_episodes": others,
                                                         "steps": steps, "autonomous_steps": autonomous,
                                                         "successful_steps": succeeded}, indent=1))
    print(f"{args.chains} chains, {steps} steps: {autonomous} by the policy alone, {succeeded} successful in the "
          f"end; {len(takeovers)} take-over episodes of {len(takeovers) + len(others)} recorded, "
          f"{time.monotonic() - started:.0f} s -> {args.out}/takeovers.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
