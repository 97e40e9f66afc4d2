"""Cost per control tick of the daemon's observers: the metrics observer, and the Rerun logger when it is on.

Two figures per variant: the time the tick's thread spends in the observer (what delays the tick), and the CPU
time of the whole process per tick, closing included (the Rerun logger logs on a thread of its own, and Rerun
encodes and writes on its own threads). The observers are the daemon's own (``vla_edge.telemetry.observer.MetricsObserver``,
``vla_edge.rerun_log.RerunLogger``), called with what the executor hands them at 10 Hz: every tick a decision,
the frame (96×96 RGB), the measured state and the action sent; every ``--chunk-every`` ticks a planned chunk of
K×H×A samples with its verdict. Rounds alternate between the variants so that both see the same machine load.

    python -m bench.telemetry_cost [--ticks 2000] [--rounds 5] [--rerun] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vla_edge.scheduler import InferenceRequest, PlannedChunk, TickDecision
from vla_edge.types import ChunkSamples, Frame, Observation, SignalScore, Verdict

SIGNALS = ("spread", "consistency", "ood", "jerk", "limits")


def make_inputs(ticks: int, chunk_every: int, k: int = 8, horizon: int = 16, seed: int = 0):
    """What the executor would hand the observers over ``ticks`` ticks (built once, outside the timing)."""
    rng = np.random.default_rng(seed)
    frames = [Frame(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8), time.monotonic_ns(), i) for i in range(8)]
    out = []
    for tick in range(ticks):
        action = rng.uniform(0, 1, 4).astype(np.float32)
        state = rng.uniform(0, 1, 3).astype(np.float32)
        planned = None
        if tick % chunk_every == 0:
            samples = ChunkSamples(rng.uniform(0, 1, (k, horizon, 4)).astype(np.float32),
                                   rng.normal(size=64).astype(np.float32), time.monotonic_ns(),
                                   {"encode": 0.4, "denoise": 1.1})
            passed = tick % (chunk_every * 5) != 0
            signals = tuple(SignalScore(s, float(rng.uniform(0, 2)), 1.0, passed) for s in SIGNALS)
            verdict = Verdict(passed, signals, "" if passed else "spread above threshold")
            request = InferenceRequest(Observation(frames[0].image, state, "put the red block in the left bin",
                                                   time.monotonic_ns()), tick, np.zeros((0, 4), np.float32))
            planned = PlannedChunk(request, samples, verdict, samples.actions[0], 1.8)
        hold = tick % 7 == 0
        decision = TickDecision(tick, None if hold else action, "no_chunk" if hold else None, new_chunk=planned)
        out.append((decision, None if hold else action, frames[tick % len(frames)], state, planned))
    return out


def run_observer(observer, inputs) -> float:
    """Seconds spent in the observer over all ``inputs``."""
    started = time.perf_counter()
    for decision, sent, frame, state, planned in inputs:
        if planned is not None:
            observer.on_chunk(planned)
        observer.on_tick(decision, 120_000, sent, frame, state, "put the red block in the left bin", False)
    return time.perf_counter() - started


def metrics_observer():
    from vla_edge.telemetry import DaemonMetrics
    from vla_edge.telemetry.observer import MetricsObserver

    return MetricsObserver(DaemonMetrics())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk-every", type=int, default=8, help="ticks per planned chunk (the demo: ~8)")
    parser.add_argument("--rerun", action="store_true", help="also measure the Rerun logger (needs rerun-sdk)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    inputs = make_inputs(args.ticks, args.chunk_every)
    variants = {"metrics": metrics_observer}
    scratch = tempfile.TemporaryDirectory(prefix="vla-edge-bench-")
    if args.rerun:
        from vla_edge.plan_view import ImagePlane
        from vla_edge.rerun_log import RerunLogger

        def rerun_observer():
            path = Path(scratch.name) / f"bench-{time.monotonic_ns()}.rrd"
            # A queue that holds the whole run: nothing is dropped, so the CPU figure covers logging every item.
            return RerunLogger.to_file(path, plane=ImagePlane(0, 1), action_names=("target_x", "target_y", "grip",
                                                                                    "done"), queue_size=10 * args.ticks)

        variants["rerun"] = rerun_observer
    per_tick_us: dict[str, list[float]] = {name: [] for name in variants}
    cpu_us: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, make in variants.items():
            observer = make()
            cpu_started = time.process_time()  # every thread of the process: Rerun encodes and writes on its own
            seconds = run_observer(observer, inputs)
            close = getattr(observer, "close", None)
            if close is not None:
                close()  # flushes what is still queued: counted in the CPU figure
            cpu_us[name].append((time.process_time() - cpu_started) / args.ticks * 1e6)
            per_tick_us[name].append(seconds / args.ticks * 1e6)
    result = {
        "ticks": args.ticks, "rounds": args.rounds, "chunk_every": args.chunk_every,
        "per_tick_us_median": {k: round(float(np.median(v)), 2) for k, v in per_tick_us.items()},
        "cpu_us_per_tick_median": {k: round(float(np.median(v)), 2) for k, v in cpu_us.items()},
        "per_tick_us_all": {k: [round(x, 2) for x in v] for k, v in per_tick_us.items()},
    }
    for name, value in result["per_tick_us_median"].items():
        cpu = result["cpu_us_per_tick_median"][name]
        share = cpu / 1e6 * 10.0 * 100.0  # at the reference 10 Hz control rate
        print(f"{name:>8}: {value:8.1f} µs per tick in the tick's thread, {cpu:8.1f} µs CPU per tick in all threads "
              f"(median of {args.rounds} rounds of {args.ticks} ticks; {share:.3f} % of one core at 10 Hz)")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
