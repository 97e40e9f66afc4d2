"""The slow path on the real clock: the whole daemon running a (slow) bundle on the generic simulated arm.

    python -m bench.slow_daemon --bundle BUNDLE_DIR --seconds 60 --out bench/results/slow_daemon

One task step of ``--seconds`` through the real daemon (`vla_edge.service.Daemon`: camera streams, ONNX Runtime in
the inference worker thread, the scheduler on the monotonic clock, the ZeroMQ action stream, the controller client;
`hil.generic_arm` is the robot: any action size, one camera stream per view). The step ends by the time budget.
Printed and written: actions per second after the first action, hold ticks after the first action (and why), chunk
latency p50/p99 (wall time of planning, in the worker), the delay the scheduler measured in ticks, boundary and
within-chunk jerk of the commands sent (× max_delta), chunks re-timed, late actions dropped, and the peak resident
memory of the process (daemon and simulated arm together, VmHWM).

    python -m bench.slow_daemon --slow-wander 24 --seconds 60     # the slow path on the real clock, no big model

For a random-weight bundle the confidence gate is off by default (its chunks are noise; the gate would refuse
them) and says so in the output; ``--gate`` keeps it on.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_edge.executor import TickObserver


@dataclass
class Timing(TickObserver):
    """Per tick: whether an action was sent and why not; per chunk: its arrival delay in ticks."""

    max_delta: np.ndarray | None = None  # the action space's; the jerk is measured where it is finite
    sent: list[bool] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    delays: list[int] = field(default_factory=list)
    boundary_jerk: list[float] = field(default_factory=list)
    within_jerk: list[float] = field(default_factory=list)
    t_first_ns: int | None = None
    t_last_ns: int = 0
    _last: np.ndarray | None = None
    _last_chunk: int | None = None

    def on_tick(self, decision, lateness_ns, sent, frame, state, instruction, intervention) -> None:  # noqa: ANN001
        now = time.monotonic_ns()
        if decision.new_chunk is not None:
            self.delays.append(decision.tick - decision.new_chunk.request.start_tick)
        if sent is not None and self.max_delta is not None:
            action = np.asarray(sent, np.float64)
            if self._last is not None:
                limited = np.isfinite(self.max_delta) & (self.max_delta > 0)
                jerk = float((np.abs(action - self._last)[limited] / self.max_delta[limited]).max())
                same = decision.chunk is not None and id(decision.chunk) == self._last_chunk
                (self.within_jerk if same else self.boundary_jerk).append(jerk)
            self._last, self._last_chunk = action, None if decision.chunk is None else id(decision.chunk)
        if sent is not None and self.t_first_ns is None:
            self.t_first_ns = now
        if self.t_first_ns is not None:
            self.sent.append(sent is not None)
            self.t_last_ns = now
            if sent is None:
                reason = decision.hold_reason or "?"
                self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    from hil.generic_arm import run_bundle_step
    from vla_edge.bundle import load_bundle
    from vla_edge.policy import manifest_v2

    parser = argparse.ArgumentParser(prog="python -m bench.slow_daemon", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="the bundle to run (or --slow-wander)")
    parser.add_argument("--slow-wander", type=int, metavar="MATMULS",
                        help="instead of --bundle: hil.wander_bundle (50 actions, 10 Hz) made slow by MATMULS "
                        "discarded 1024² matrix products in its encoder (24: about 1.2 s here)")
    parser.add_argument("--fixed", action="store_true",
                        help="scheduler.request_by_delay = false (ask at replan_when_remaining whatever the delay)")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--samples", type=int, default=1, help="K samples per chunk (policy.num_samples)")
    parser.add_argument("--threads", type=int, default=2, help="policy.intra_op_threads")
    parser.add_argument("--boundary", default="auto")
    parser.add_argument("--instruction", default="pick up the cube")
    parser.add_argument("--gate", action="store_true", help="keep the confidence gate on")
    parser.add_argument("--out", type=Path, default=Path("bench/results/slow_daemon"))
    args = parser.parse_args(argv)

    work = tempfile.TemporaryDirectory(prefix="vla-edge-slow-bundle-")
    if args.slow_wander:
        from hil.wander_bundle import WanderSpec, build_wander_bundle

        args.bundle = build_wander_bundle(Path(work.name) / "wander",
                                          WanderSpec(burn_size=1024, burn_matmuls=args.slow_wander))
        args.precision = "fp32"
        args.instruction = "wander"
    if args.bundle is None:
        parser.error("give --bundle or --slow-wander")
    manifest = manifest_v2(load_bundle(args.bundle))
    random_weights = bool(manifest.policy.random_weights)
    timing = Timing(np.asarray(manifest.action_space.max_delta, np.float64))
    extra: dict[str, dict] = {
        "policy": {"bundle": str(args.bundle), "precision": args.precision, "num_samples": args.samples,
                   "intra_op_threads": args.threads},
        "scheduler": {"boundary": args.boundary, "request_by_delay": not args.fixed},
    }
    if not args.gate:
        extra["confidence"] = {"enabled": False}
    started = time.monotonic()
    load_before = os.getloadavg()[0]  # this machine is shared: the figures mean little without it
    with tempfile.TemporaryDirectory(prefix="vla-edge-slow-") as tmp:
        run = run_bundle_step(args.bundle, Path(tmp), args.instruction, precision=args.precision,
                              step_timeout_s=args.seconds, observers=[timing], **extra)
    wall = time.monotonic() - started
    work.cleanup()
    boundary = np.asarray(timing.boundary_jerk or [0.0])
    counters = run.counters
    latencies = np.asarray(run.latencies_ms or [float("nan")])
    active_s = (timing.t_last_ns - (timing.t_first_ns or timing.t_last_ns)) / 1e9
    sent_after_first = sum(timing.sent)
    result: dict[str, Any] = {
        "bundle": f"{manifest.name} {manifest.version}",
        "random_weights": random_weights,
        "policy_type": manifest.policy.type,
        "parameters": manifest.policy.parameters,
        "precision": args.precision,
        "num_samples": args.samples,
        "intra_op_threads": args.threads,
        "horizon": manifest.horizon,
        "control_rate_hz": manifest.control_rate_hz,
        "boundary": args.boundary,
        "gate": args.gate,
        "seconds": args.seconds,
        "step_outcome": run.report.outcome,
        "actions_sent": run.actions_sent,
        "actions_per_second_after_first": sent_after_first / active_s if active_s > 0 else 0.0,
        "ticks_after_first_action": len(timing.sent),
        "hold_ticks_after_first_action": len(timing.sent) - sent_after_first,
        "hold_reasons": timing.reasons,
        "chunks_accepted": run.chunks_accepted,
        "chunk_latency_ms_p50": float(np.percentile(latencies, 50)),
        "chunk_latency_ms_p99": float(np.percentile(latencies, 99)),
        "chunk_latency_ms_max": float(latencies.max()),
        "delay_ticks": timing.delays,
        "boundary_jerk_p50": float(np.percentile(boundary, 50)),
        "boundary_jerk_max": float(boundary.max()),
        "within_chunk_jerk_max": float(max(timing.within_jerk, default=0.0)),
        "request_by_delay": not args.fixed,
        "late_dropped": getattr(counters, "late_dropped", None),
        "chunks_retimed": getattr(counters, "retimed", None),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # before and after the run
        "cpus": os.cpu_count(),
        "wall_seconds": round(wall, 1),
        "command": "python -m bench.slow_daemon " + " ".join(argv if argv is not None else _argv()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slow_daemon.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    label = " (RANDOM WEIGHTS)" if random_weights else ""
    print(f"{result['bundle']}{label}, {args.precision}, K = {args.samples}, boundary {args.boundary}, "
          f"gate {'on' if args.gate else 'off'}: {args.seconds:g} s step ({run.report.outcome})")
    for key in ("actions_per_second_after_first", "ticks_after_first_action", "hold_ticks_after_first_action",
                "hold_reasons", "chunks_accepted", "chunk_latency_ms_p50", "chunk_latency_ms_p99", "delay_ticks",
                "boundary_jerk_p50", "boundary_jerk_max", "within_chunk_jerk_max", "late_dropped", "chunks_retimed",
                "peak_rss_mib", "load_average_1m"):
        print(f"  {key}: {result[key]}")
    return 0


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    raise SystemExit(main())
