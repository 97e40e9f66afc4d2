"""The slow path: what a long inference delay does to the control loop, with and without real-time chunking.

    python -m bench.slow_path --chains 50 --seed 7201 --out bench/results/slow_path        # reference (H = 8)
    python -m bench.slow_path --bundle models/bundles/reference-h50 --out bench/results/slow_path-h50
    python -m bench.slow_path --wander 20 --out bench/results/slow_path      # the wander policy, H = 50, at 1.5 s
    python -m bench.slow_path --quick --out /tmp/slow                                         # CI smoke
    python -m bench.slow_path --combine bench/results/slow_path-100/7201 bench/results/slow_path-100/7202 \
        --out bench/results/slow_path-100 --plot docs/images/slow_path.png     # two roots: pooled, with spread

The reference world's ten-step chains, autonomous (the policy alone, every chunk actuated), on the robot's own
executor and scheduler in simulated time (``vla_edge.simulation``), with the policy's real ONNX outputs; only the
inference delay is simulated: a chunk asked for becomes available ``delay`` simulated seconds later (plus the half
tick plan-ahead asks early). For each delay, the same chains run with each scheduling mode:

* ``fixed``: the next chunk is asked for when ``replan_when_remaining`` (4) actions are left, whatever the delay
  (the scheduler before issue 13; the arm holds whenever inference outlasts those 4 actions), new chunk takes over;
* ``async``: asked for when the actions left fall to the measured delay + 1 (``request_by_delay``), new chunk
  takes over at arrival (``boundary = none``): no real-time chunking;
* ``rtc``: asked for the same way, the actions that run meanwhile frozen and the rest of the executing chunk a
  guided soft target (``boundary = rtc``): real-time chunking;
* ``freeze`` (``--modes`` only): the frozen prefix without guidance, as an ablation.

Figures per (delay, mode): per-step and chain success (the simulator's judge), hold ticks after each step's first
action (the first chunk of a step always waits for inference), boundary jerk (at each tick whose action comes from
another chunk than the previous action's, holds in between included: the largest change over the position
dimensions divided by the action space's ``max_delta``; > 1 is a jump the controller would refuse; the same within
chunks for comparison), the measured delay of each chunk (ticks from its first row's due tick to its arrival), and
chunks re-timed after a hold. No action is ever executed late (the scheduler drops a late one; in simulated time no
tick is missed, so none is).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_edge.executor import TickObserver
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.scheduler import TickDecision
from vla_edge.simulation import chain_setup, open_policy, run_autonomous, simulation_settings

DELAYS_S = (0.0, 0.3, 1.0, 2.0)
MODES = {
    "fixed": {"boundary": "none", "request_by_delay": False},
    "async": {"boundary": "none", "request_by_delay": True},
    "freeze": {"boundary": "freeze", "request_by_delay": True},
    "rtc": {"boundary": "rtc", "request_by_delay": True},
}
DEFAULT_MODES = ("fixed", "async", "rtc")
DEV_SEED = 2000  # docs/evaluation-seeds.md: design choices are made on these chains


@dataclass
class SlowPathObserver(TickObserver):
    """Counts, per policy step, the hold ticks after its first action and the jerk where chunks meet."""

    max_delta: np.ndarray
    dims: np.ndarray  # the action dimensions whose jerk is measured (the position ones)
    holds_after_first: int = 0
    ticks_after_first: int = 0
    hold_reasons: dict[str, int] = field(default_factory=dict)
    boundary_jerk: list[float] = field(default_factory=list)
    within_jerk: list[float] = field(default_factory=list)
    steps: int = 0
    delays_ticks: list[int] = field(default_factory=list)  # per chunk: ticks from its first row's due tick to arrival
    retimed: int = 0  # chunks that arrived after the arm ran out of actions (re-timed to start at arrival)
    _last: np.ndarray | None = None
    _last_chunk: int | None = None
    _started: bool = False

    def on_tick(self, decision: TickDecision, lateness_ns: int, sent: np.ndarray | None, frame: Any,
                state: np.ndarray | None, instruction: str, intervention: bool) -> None:
        if intervention:
            return
        arrived = decision.new_chunk
        if arrived is not None:
            request = arrived.request
            self.delays_ticks.append(decision.tick - request.start_tick)
            self.retimed += decision.tick > request.start_tick + request.committed
        if sent is None:
            if self._started:
                self.holds_after_first += 1
                self.ticks_after_first += 1
                reason = decision.hold_reason or "?"
                self.hold_reasons[reason] = self.hold_reasons.get(reason, 0) + 1
            return  # the arm stays at the last action: the next one is measured against it
        chunk = None if decision.chunk is None else id(decision.chunk)
        if self._started:
            self.ticks_after_first += 1
        if self._last is not None:
            jerk = float((np.abs(sent - self._last)[self.dims] / self.max_delta[self.dims]).max())
            (self.boundary_jerk if chunk != self._last_chunk else self.within_jerk).append(jerk)
        self._started = True
        self._last, self._last_chunk = np.asarray(sent, np.float64), chunk

    def on_step_end(self, report: Any, instruction: str) -> None:
        self.steps += 1
        self._last, self._last_chunk, self._started = None, None, False


# ------------------------------------------------------------------------------------------- the wander policy


@dataclass
class Trace(TickObserver):
    """Every tick's action (or None) with the chunk it came from, and every planned chunk's request."""

    sent: list = field(default_factory=list)
    requests: list = field(default_factory=list)

    def on_tick(self, decision, lateness_ns, sent, frame, state, instruction, intervention) -> None:  # noqa: ANN001
        self.sent.append((None if sent is None else np.array(sent), decision.chunk))

    def on_chunk(self, planned) -> None:  # noqa: ANN001
        self.requests.append(planned.request)


@dataclass
class WanderRun:
    """One step of the wander policy (hil.wander_bundle) on the executor in simulated time, and its figures."""

    trace: Trace
    counters: Any
    delay_estimate: int
    low_confidence_actuations: int
    outcome: str
    max_delta: float

    @property
    def first_action(self) -> int:
        return next(i for i, (a, _) in enumerate(self.trace.sent) if a is not None)

    def holds_after_first_chunk(self) -> int:
        return sum(1 for a, _ in self.trace.sent[self.first_action:] if a is None)

    def _jerks(self, across: bool) -> np.ndarray:
        sent = self.trace.sent[self.first_action:]
        return np.asarray([float((np.abs(b[:2] - a[:2]) / self.max_delta).max())
                           for (a, ca), (b, cb) in zip(sent, sent[1:], strict=False)
                           if a is not None and b is not None and (ca is not cb) == across])

    def boundary_jerk(self) -> np.ndarray:
        """Where consecutive actions come from different chunks: |Δ target_x|, |Δ target_y| over max_delta."""
        return self._jerks(across=True)

    def within_jerk(self) -> np.ndarray:
        return self._jerks(across=False)


def run_wander(bundle, *, boundary: str = "rtc", request_by_delay: bool = True, seed: int = 3,  # noqa: ANN001
               delay_s: float = 1.5, seconds: float = 30.0) -> WanderRun:
    """The wander policy (the real PolicyRunner over a real flow bundle) on the robot's executor and the simulated
    arm, inference arriving ``delay_s`` simulated seconds after it is asked for, for one step of ``seconds``. The
    confidence gate judges every chunk (limits and jerk; the samples' spread is wide by design)."""
    import threading

    from hil.world import TabletopWorld
    from vla_edge.clock import SimClock
    from vla_edge.confidence import ActionBounds, ConfidenceMonitor
    from vla_edge.executor import ExecutorSettings, PolicyStepExecutor
    from vla_edge.policy import PolicyRunner
    from vla_edge.simulation import RunRecorder, SimulatedArm, StepRun

    manifest = bundle.manifest
    runner = PolicyRunner(bundle, precision="fp32", providers=["CPUExecutionProvider"], intra_op_threads=1,
                          seed=seed, warm_up_samples=1)
    world = TabletopWorld(5)
    world.arrange({}, gripper=(0.5, 0.5))
    clock = SimClock()
    arm = SimulatedArm(world, clock, manifest.control_rate_hz)
    space = manifest.action_space
    monitor = ConfidenceMonitor(
        ActionBounds(np.asarray(space.low), np.asarray(space.high), np.asarray(space.max_delta)), None,
        {"spread": np.inf, "consistency": np.inf, "limits": 0.0, "jerk": 1.05})
    settings = ExecutorSettings(num_samples=1, control_rate_hz=manifest.control_rate_hz, replan_when_remaining=4,
                                boundary=boundary, blend_steps=3, max_frame_age_ms=250.0, step_timeout_s=seconds,
                                state_dim=3, request_by_delay=request_by_delay, simulated_inference_delay_s=delay_s)
    trace = Trace()
    recorder = RunRecorder(gate=True)
    recorder.run = StepRun(0, "policy", "stalled", None, "", 0)
    executor = PolicyStepExecutor(runner, monitor, arm, arm, settings, observers=[trace, recorder], state=arm,
                                  clock=clock)
    try:
        report = executor.run_step(0, "wander", threading.Event())
        scheduler = executor.scheduler
        return WanderRun(trace, scheduler.counters, scheduler.delay.ticks, recorder.low_confidence_actuations,
                         report.outcome, float(space.max_delta[0]))
    finally:
        executor.close()


def wander_table(runs: int, delay_s: float, out: Path) -> list[dict[str, Any]]:
    """Boundary jerk of the wander policy at ``delay_s`` over ``runs`` seeds, per mode (the continuity a sampler
    can reach where the exact conditional is known: the guidance's own measurement)."""
    import tempfile

    from hil.wander_bundle import WanderSpec, build_wander_bundle
    from vla_edge.bundle import load_bundle

    spec = WanderSpec(scale=0.08)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vla-edge-wander-") as tmp:
        bundle = load_bundle(build_wander_bundle(Path(tmp) / "wander", spec))
        for mode in ("async", "freeze", "rtc"):
            boundary, within, holds = [], [], 0
            for seed in range(runs):
                run = run_wander(bundle, boundary=MODES[mode]["boundary"], seed=seed, delay_s=delay_s)
                boundary.extend(run.boundary_jerk().tolist())
                within.extend(run.within_jerk().tolist())
                holds += run.holds_after_first_chunk()
            b = np.asarray(boundary)
            rows.append({"mode": mode, "runs": runs, "delay_s": delay_s, "boundaries": len(b),
                         "boundary_jerk_p50": float(np.median(b)), "boundary_jerk_p99": float(np.percentile(b, 99)),
                         "boundary_jerk_max": float(b.max()), "boundaries_over_max_delta": float(np.mean(b > 1.0)),
                         "within_chunk_jerk_max": float(max(within)), "hold_ticks_after_first_chunk": holds})
            print(f"wander {mode:>6}: boundary jerk p50 {np.median(b):.2f} p99 {np.percentile(b, 99):.2f} "
                  f"max {b.max():.2f} (x max_delta), {np.mean(b > 1.0):.1%} over; within-chunk max "
                  f"{max(within):.2f}; holds after the first chunk {holds}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "wander.json").write_text(json.dumps({"spec": spec.__dict__, "rows": rows}, indent=1) + "\n",
                                     encoding="utf-8")
    return rows


def run_cell(policy, bundle, monitor, chains: Sequence, delay_s: float, mode: str, samples: int) -> dict[str, Any]:
    manifest = bundle.manifest
    settings = simulation_settings(manifest, num_samples=samples, simulated_inference_delay_s=delay_s,
                                   step_timeout_s=max(30.0, 30.0 * (1 + delay_s)), **MODES[mode])
    space = manifest.action_space
    observer = SlowPathObserver(np.asarray(space.max_delta, np.float64), np.arange(min(2, len(space.max_delta))))
    steps, chain_ok = [], []
    chunks = 0
    started = time.perf_counter()
    for setup in chains:
        result = run_autonomous(setup, policy, monitor, settings, observers=[observer])
        steps += [bool(s.success) for s in result.steps]
        chain_ok.append(result.success)
        chunks += sum(len(s.chunks) for s in result.steps)
    delays = np.asarray(observer.delays_ticks or [0])
    boundary = np.asarray(observer.boundary_jerk) if observer.boundary_jerk else np.zeros(1)
    return {
        "delay_s": delay_s,
        "mode": mode,
        "chains": len(chains),
        "step_success": float(np.mean(steps)),
        "chain_success": float(np.mean(chain_ok)),
        "hold_ticks_after_first_action_per_step": observer.holds_after_first / max(1, observer.steps),
        "hold_fraction_after_first_action": observer.holds_after_first / max(1, observer.ticks_after_first),
        "hold_reasons": observer.hold_reasons,
        "boundary_jerk_p50": float(np.percentile(boundary, 50)),
        "boundary_jerk_p99": float(np.percentile(boundary, 99)),
        "boundary_jerk_max": float(boundary.max()),
        "boundaries_over_max_delta": float(np.mean(boundary > 1.0)),
        "boundaries": len(observer.boundary_jerk),
        "within_chunk_jerk_max": float(max(observer.within_jerk, default=0.0)),
        "chunks": chunks,
        "delay_ticks_median": float(np.median(delays)),
        "delay_ticks_max": int(delays.max()),
        "chunks_retimed": observer.retimed,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def save_plot(rows: list[dict[str, Any]], path: Path, title: str, horizon_s: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    delays = sorted({r["delay_s"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for mode in modes:
        cells = {r["delay_s"]: r for r in rows if r["mode"] == mode}
        xs = [d for d in delays if d in cells]
        line = axes[0].plot(xs, [cells[d]["step_success"] for d in xs], "o-", label=mode)[0]
        axes[1].plot(xs, [cells[d]["hold_ticks_after_first_action_per_step"] for d in xs], "o-", label=mode)
        axes[2].plot(xs, [cells[d]["boundary_jerk_p99"] for d in xs], "o-", label=mode)
        for panel, key in ((0, "step_success_by_seed"), (2, "boundary_jerk_p99_by_seed")):  # pooled runs: each root
            for d in xs:
                values = cells[d].get(key, [])
                axes[panel].plot([d] * len(values), values, "_", color=line.get_color(), ms=12, mew=1.5)
    lowest = min([r["step_success"] for r in rows] + [v for r in rows for v in r.get("step_success_by_seed", [])])
    axes[0].set_ylim(min(0.8, lowest - 0.05), 1.0)
    axes[0].set_title("per-step success (policy alone)")
    axes[1].set_title("hold ticks per step after its first action")
    if horizon_s is not None:
        for ax in axes:
            ax.axvline(horizon_s, color="grey", lw=0.8, ls=":")
        axes[1].text(horizon_s, axes[1].get_ylim()[1] * 0.9, " one chunk", color="grey")
    axes[2].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[2].set_title("boundary jerk p99 (× max_delta)")
    for ax in axes:
        ax.set_xlabel("inference delay (s)")
        ax.set_xticks(delays)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| delay | mode | per-step success | chain success | hold ticks per step after its first action | "
             "hold share | boundary jerk p50 / p99 / max (× max_delta) | boundaries > max_delta |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['delay_s']:g} s | {r['mode']} | {r['step_success']:.1%} | {r['chain_success']:.0%} | "
            f"{r['hold_ticks_after_first_action_per_step']:.1f} | {r['hold_fraction_after_first_action']:.0%} | "
            f"{r['boundary_jerk_p50']:.2f} / {r['boundary_jerk_p99']:.2f} / {r['boundary_jerk_max']:.2f} | "
            f"{r['boundaries_over_max_delta']:.1%} |")
    return "\n".join(lines) + "\n"


def replot(out: Path) -> Path:
    """Redraw the plot from a run's JSON (``--replot``)."""
    summary = json.loads((out / "slow_path.json").read_text(encoding="utf-8"))
    horizon_s = summary["horizon"] / summary["control_rate_hz"]
    rows = summary["rows"]
    chains = rows[0]["chains"] if rows else 0
    return save_plot(rows, out / "slow_path.png",
                     f"{summary['bundle'].split()[0]} ({summary['precision']}, chunk of {summary['horizon']} actions = "
                     f"{horizon_s:g} s at {summary['control_rate_hz']:g} Hz), {chains} chains of seed "
                     f"{summary['seed']}", horizon_s)


def combine(runs: Sequence[Path], out: Path, plot: Path | None = None) -> list[dict[str, Any]]:
    """Pool runs of the same cells on different seed roots (``--combine``): per (delay, mode) the success pooled
    over every chain and each root's own figure (the spread), hold ticks and jerk averaged over the roots. Writes
    ``combined.json`` and ``combined.md`` under ``out`` and the plot (pooled lines, each root's points)."""
    summaries = [json.loads((run / "slow_path.json").read_text(encoding="utf-8")) for run in runs]
    first = summaries[0]
    for other in summaries[1:]:
        for key in ("bundle", "horizon", "control_rate_hz", "precision", "num_samples"):
            if other[key] != first[key]:
                raise SystemExit(f"error: cannot pool runs that differ in {key}: {first[key]} against {other[key]}")
    seeds = [s["seed"] for s in summaries]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: each run must be on its own seed root, got {seeds}")
    cells: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for summary in summaries:
        for row in summary["rows"]:
            cells.setdefault((row["delay_s"], row["mode"]), []).append({**row, "seed": summary["seed"]})
    rows = []
    for (delay, mode), per_root in cells.items():
        if len(per_root) != len(summaries):
            continue  # a cell not run on every root is not pooled
        chains = sum(r["chains"] for r in per_root)

        def pooled(key: str, rows_: list[dict[str, Any]] = per_root, n: int = chains) -> float:
            return float(sum(r[key] * r["chains"] for r in rows_) / n)

        rows.append({
            "delay_s": delay, "mode": mode, "chains": chains, "seeds": seeds,
            "step_success": pooled("step_success"),
            "step_success_by_seed": [r["step_success"] for r in per_root],
            "chain_success": pooled("chain_success"),
            "chain_success_by_seed": [r["chain_success"] for r in per_root],
            "hold_ticks_after_first_action_per_step": pooled("hold_ticks_after_first_action_per_step"),
            "hold_fraction_after_first_action": pooled("hold_fraction_after_first_action"),
            "boundary_jerk_p50": pooled("boundary_jerk_p50"),
            "boundary_jerk_p99": pooled("boundary_jerk_p99"),
            "boundary_jerk_p99_by_seed": [r["boundary_jerk_p99"] for r in per_root],
            "boundary_jerk_max": max(r["boundary_jerk_max"] for r in per_root),
            "boundaries_over_max_delta": pooled("boundaries_over_max_delta"),
            "chunks_retimed": sum(r["chunks_retimed"] for r in per_root),
        })
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: first[k] for k in ("bundle", "horizon", "control_rate_hz", "precision", "num_samples")}
    summary.update(seeds=seeds, runs=[str(r) for r in runs], rows=rows,
                   complete=all(s.get("complete", True) for s in summaries))
    (out / "combined.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (out / "combined.md").write_text(combined_markdown(rows), encoding="utf-8")
    horizon_s = first["horizon"] / first["control_rate_hz"]
    per_seed = rows[0]["chains"] // len(seeds) if rows else 0
    save_plot(rows, plot or out / "slow_path.png",
              f"{first['bundle'].split()[0]} ({first['precision']}, chunk of {first['horizon']} actions = "
              f"{horizon_s:g} s at {first['control_rate_hz']:g} Hz), {per_seed} chains on each of seed roots "
              f"{', '.join(map(str, seeds))} (line: pooled; points: each root)", horizon_s)
    return rows


def combined_markdown(rows: list[dict[str, Any]]) -> str:
    seeds = rows[0]["seeds"] if rows else []
    lines = ["| delay | mode | per-step success, pooled (" + " / ".join(map(str, seeds)) + ") | chain success, pooled ("
             + " / ".join(map(str, seeds)) + ") | hold ticks per step after its first action | "
             "boundary jerk p50 / p99 (× max_delta), max |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        by_step = " / ".join(f"{v:.1%}" for v in r["step_success_by_seed"])
        by_chain = " / ".join(f"{v:.0%}" for v in r["chain_success_by_seed"])
        lines.append(
            f"| {r['delay_s']:g} s | {r['mode']} | {r['step_success']:.1%} ({by_step}) | {r['chain_success']:.0%} "
            f"({by_chain}) | {r['hold_ticks_after_first_action_per_step']:.1f} | {r['boundary_jerk_p50']:.2f} / "
            f"{r['boundary_jerk_p99']:.2f}, {r['boundary_jerk_max']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_path", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE_DIR)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--chains", type=int, default=50)
    parser.add_argument("--seed", type=int, default=DEV_SEED)
    parser.add_argument("--samples", type=int, default=8, help="K noise samples per chunk")
    parser.add_argument("--delays", type=float, nargs="+", default=list(DELAYS_S))
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, default=Path("bench/results/slow_path"))
    parser.add_argument("--quick", action="store_true", help="2 chains, delays 0 and 1 s (CI smoke)")
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from --out's JSON")
    parser.add_argument("--wander", type=int, metavar="RUNS",
                        help="instead: the wander policy (hil.wander_bundle, H = 50) at 1.5 s over RUNS seeds")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="RUN_DIR",
                        help="instead: pool runs on different seed roots (their slow_path.json) into --out")
    parser.add_argument("--plot", type=Path, help="with --combine: where to write the plot (default: --out)")
    args = parser.parse_args(argv)
    if args.combine:
        missing = [str(d) for d in args.combine if not (d / "slow_path.json").is_file()]
        if missing:
            parser.error(f"no slow_path.json in {', '.join(missing)}")
        rows = combine(args.combine, args.out, args.plot)
        print(combined_markdown(rows))
        print(f"wrote {args.out / 'combined.json'} and {args.plot or args.out / 'slow_path.png'}")
        return 0
    if args.replot:
        print(f"wrote {replot(args.out)}")
        return 0
    if args.wander:
        wander_table(args.wander, 1.5, args.out)
        return 0
    if args.quick:
        args.chains, args.delays = min(args.chains, 2), [0.0, 1.0]

    from vla_edge.simulation import base_monitor

    bundle, policy = open_policy(args.bundle, args.precision, threads=1)
    monitor = base_monitor(bundle)
    chains = [chain_setup(args.seed, i) for i in range(args.chains)]
    manifest = bundle.manifest
    rows: list[dict[str, Any]] = []
    summary = {
        "bundle": f"{manifest.name} {manifest.version}",
        "horizon": policy.horizon,
        "control_rate_hz": manifest.control_rate_hz,
        "precision": args.precision,
        "num_samples": args.samples,
        "seed": args.seed,
        "rows": rows,
        "complete": False,
        "command": "python -m bench.slow_path " + " ".join(argv if argv is not None else _argv()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for delay in args.delays:
        for mode in args.modes:
            row = run_cell(policy, bundle, monitor, chains, delay, mode, args.samples)
            rows.append(row)
            print(f"delay {delay:g} s {mode:>6}: per-step {row['step_success']:.1%}, chains "
                  f"{row['chain_success']:.0%}, holds/step {row['hold_ticks_after_first_action_per_step']:.1f}, "
                  f"jerk p99 {row['boundary_jerk_p99']:.2f} max {row['boundary_jerk_max']:.2f} "
                  f"({row['wall_seconds']:.0f} s)", flush=True)
            # Written after every cell: a run cut short (a shared, loaded machine) keeps the cells it finished.
            summary["complete"] = len(rows) == len(args.delays) * len(args.modes)
            (args.out / "slow_path.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    (args.out / "slow_path.md").write_text(markdown(rows), encoding="utf-8")
    horizon_s = policy.horizon / manifest.control_rate_hz
    png = save_plot(rows, args.out / "slow_path.png",
                    f"{manifest.name} ({args.precision}, chunk of {policy.horizon} actions = {horizon_s:g} s at "
                    f"{manifest.control_rate_hz:g} Hz), {args.chains} chains of seed {args.seed}", horizon_s)
    print(markdown(rows))
    print(f"wrote {args.out / 'slow_path.json'} and {png}")
    return 0


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    raise SystemExit(main())
