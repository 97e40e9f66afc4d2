"""The headline reliability benchmark: ten-step chains, autonomous vs gated, on the reference world.

    python -m bench.chain_benchmark --chains 100 --out bench/results/chain     # ~minutes on 2 cores
    python -m bench.chain_benchmark --quick --out /tmp/chain                   # 5 chains, CI smoke

Both modes run the SAME chains (layouts, instructions) with the SAME policy noise, in simulated time, on the
robot's own executor (``vla_edge.simulation.SimulatedRobot``: the daemon's ``PolicyStepExecutor`` and
``ChunkScheduler`` on a simulated clock and the simulated arm):

* **autonomous**: the policy alone; the executor runs in shadow mode (every verdict computed, every chunk
  actuated). A failed step is finished by the scripted expert only so the next step starts where the chain
  expects (the chain already counts as failed). Its steps give each signal's AUROC for predicting step failure
  and the gate's would-be miss/false-alarm rates.
* **gated**: the real ``TaskRunner`` (checkpoints every 4 steps with operator verification), the real
  ``EscalationQueue`` and the real ``ConfidenceMonitor`` on every chunk; a failed verdict holds the arm and
  escalates. A simulated operator answers at once in wall time but is charged ``--operator-delay-s`` of
  operator time per answer: it looks at the world (the judge), approves a verification when every covered
  step succeeded, and otherwise takes over and finishes the step with the scripted expert (also charged).

What runs for real: ONNX Runtime (``PolicyRunner``, K noise samples per chunk), the executor and its scheduler,
``ConfidenceMonitor`` (built by the daemon's own ``build_monitor``), ``TaskRunner``, ``EscalationQueue``,
``CheckpointStore``, the pymunk world and its judge. Simulated: time (``SimClock``; inference is synchronous and
its chunk arrives at the next tick, as the worker's ~2 ms chunk planned half a tick ahead does on the robot) and
the operator (``ScriptedOperator`` answers as ``hil.harness.SimulatedOperator`` does, without threads).
Simulated time makes 100 chains take minutes instead of the ~50 min of real time.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hil.world import CONTROL_RATE_HZ, TabletopWorld
from vla_edge.bundle import Bundle
from vla_edge.calibration import (
    CalibrationError,
    StepScores,
    auroc,
    calibrate_miss_rate,
    calibrated_signals,
    fixed_thresholds,
    rates,
)
from vla_edge.checkpoint import CheckpointStore
from vla_edge.confidence import DEFAULT_THRESHOLDS, SIGNALS, ConfidenceMonitor
from vla_edge.config import Settings, TaskSettings
from vla_edge.executor import ExecutorSettings
from vla_edge.operator.escalation import Decision, Escalation, EscalationQueue
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.policy import PolicyRunner
from vla_edge.simulation import (
    HAND_PLACEMENT_S,
    N_STEPS,
    AutonomousChain,
    ChainSetup,
    SimulatedRobot,
    StepRun,
    base_monitor,
    chain_setup,
    collect_autonomous,
    open_policy,
    robot_for,
    run_autonomous,
    scene_mismatch,
    simulation_settings,
    step_scores,
)
from vla_edge.task import TaskRunner, TaskSpec

CHECKPOINT_EVERY = 4
BENCH_SEED = 0
CALIBRATION_SEED = 1000  # held-out chains: a different seed root, so no layout/chain of the benchmark is reused


# ------------------------------------------------------------------------------------------- operator


class ScriptedOperator:
    """Answers as a careful person at the console would, and as ``hil.harness.SimulatedOperator`` does for
    refusals and stalls: take over the step. At a checkpoint it looks at the scene (the simulator's ground truth):
    every block the plan has placed by now in its bin and nothing held → approve; otherwise take over and put
    the scene right. (Judging the scene, not each step's own verdict: a failed step whose block a later step
    moved again needs no fixing, and re-doing it would undo the later step.) Each answer costs ``delay_s`` of
    operator time (simulated); take-overs also cost the ticks the expert drives."""

    def __init__(
        self, executor: SimulatedRobot, plan: Sequence[dict[str, str]], delay_s: float, max_answers: int = 40
    ) -> None:
        self.executor = executor
        self.plan = plan  # plan[i]: the bins the chain wants after step i (only blocks that have a bin)
        self.delay_s = delay_s
        self.max_answers = max_answers
        self.touches: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()

    def answer(self, escalation: Escalation) -> Decision:
        self.touches[escalation.kind] += 1
        if sum(self.touches.values()) > self.max_answers:
            return self._decision(escalation, "abort", None)
        if escalation.kind == "verify":
            last = max(escalation.steps)
            target = self.plan[last]
            if not scene_mismatch(self.executor.world, target):
                return self._decision(escalation, "approve", None)
            failed = [s for s in escalation.steps if not self.executor.outcomes.get(s, (False, ""))[0]]
            chosen = failed[-1] if failed else last
            self.executor.scene_targets[chosen] = target
            return self._decision(escalation, "takeover", chosen)
        return self._decision(escalation, "takeover", escalation.step_index)

    def _decision(self, escalation: Escalation, action: str, step: int | None) -> Decision:
        self.actions[f"{escalation.kind}:{action}"] += 1
        return Decision(escalation_id=escalation.id, action=action, step_index=step,  # type: ignore[arg-type]
                        operator="scripted-operator")

    @property
    def operator_seconds(self) -> float:
        executor = self.executor
        return (sum(self.touches.values()) * self.delay_s + executor.operator_ticks / CONTROL_RATE_HZ
                + executor.hand_placements * HAND_PLACEMENT_S)


class AnsweredQueue(EscalationQueue):
    """The real queue, with the operator's answer filed the moment a question is raised (no thread, no wait)."""

    def __init__(self, operator: ScriptedOperator) -> None:
        super().__init__()
        self.operator = operator

    def raise_escalation(self, kind, step_index, instruction, **kwargs) -> Escalation:  # type: ignore[override]
        escalation = super().raise_escalation(kind, step_index, instruction, **kwargs)
        self.decide(self.operator.answer(escalation))
        return escalation


# ------------------------------------------------------------------------------------------- chains


def plan_bins(world: TabletopWorld, chain: Sequence) -> list[dict[str, str]]:
    """After each step, where the plan wants the blocks: those that have a bin by then (the others may be
    anywhere on the table)."""
    bins = {c: b for c, b in world.block_bins().items() if b is not None}
    plan = []
    for step in chain:
        bins[step.colour] = step.bin
        plan.append(dict(bins))
    return plan


@dataclass
class GatedChain:
    index: int
    status: str
    success: bool
    final_state_ok: bool
    touches: dict[str, int]
    decisions: dict[str, int]
    operator_seconds: float
    robot_seconds: float
    low_confidence_actuations: int
    chunks_actuated: int
    chunks_flagged: int
    policy_attempts: int
    gate_misses: int  # policy attempts that said done but failed the judge (only a checkpoint can catch them)
    steps_by_policy: int  # steps whose final, successful completion was the policy's own
    hand_placements: int
    runs: list[StepRun]


def run_gated(
    setup: ChainSetup,
    policy: PolicyRunner,
    monitor: ConfidenceMonitor,
    settings: ExecutorSettings,
    state_dir: Path,
    operator_delay_s: float,
    router=None,
) -> GatedChain:
    robot = robot_for(setup, policy, monitor, settings, router)
    try:
        return _run_gated(setup, robot, settings, state_dir, operator_delay_s)
    finally:
        robot.close()


def _run_gated(setup: ChainSetup, robot: SimulatedRobot, settings: ExecutorSettings, state_dir: Path,
               operator_delay_s: float) -> GatedChain:
    world = robot.world
    plan = plan_bins(world, setup.chain)
    operator = ScriptedOperator(robot, plan, operator_delay_s)
    task_settings = TaskSettings(checkpoint_every=CHECKPOINT_EVERY, verify_at_checkpoint=True, state_dir=state_dir,
                                 step_timeout_s=settings.step_timeout_s)
    steps = tuple(s.instruction for s in setup.chain)
    spec = TaskSpec(task_id=f"bench-{setup.noise_seed[0]}-{setup.index}", steps=steps)
    runner = TaskRunner(spec, robot, AnsweredQueue(operator), CheckpointStore(state_dir), task_settings,
                        answer_timeout_s=1.0, events=robot.on_event)
    result = runner.run(threading.Event())
    final_ok = not scene_mismatch(world, plan[-1])
    chunks = [c for run in robot.runs for c in run.chunks]
    policy_runs = [r for r in robot.runs if r.driver == "policy"]
    return GatedChain(
        index=setup.index,
        status=result.status,
        success=result.status == "completed" and final_ok,
        final_state_ok=final_ok,
        touches=dict(operator.touches),
        decisions=dict(operator.actions),
        operator_seconds=operator.operator_seconds,
        robot_seconds=robot.seconds + sum(operator.touches.values()) * operator_delay_s,
        low_confidence_actuations=robot.low_confidence_actuations,
        chunks_actuated=sum(1 for c in chunks if c.actuated > 0),
        chunks_flagged=sum(1 for c in chunks if not c.passed),
        policy_attempts=len(policy_runs),
        gate_misses=sum(1 for r in policy_runs if r.outcome == "done" and not r.success),
        hand_placements=robot.hand_placements,
        steps_by_policy=sum(1 for i, who in robot.resolved_by.items()
                            if who == "policy" and robot.outcomes.get(i, (False, ""))[0]),
        runs=robot.runs,
    )


# ------------------------------------------------------------------------------------------- monitor


# ------------------------------------------------------------------------------------------- summary


def summarise(
    autonomous: Sequence[AutonomousChain], gated: Sequence[GatedChain], thresholds: dict[str, float]
) -> dict[str, Any]:
    n = len(gated)
    scores = step_scores(autonomous)
    gate_rates = rates(scores, thresholds)
    flagged_steps = np.array([s.flagged() for c in autonomous for s in c.steps])
    touches = Counter()
    for chain in gated:
        touches.update(chain.touches)
    return {
        "chains": n,
        "steps_per_chain": N_STEPS,
        "autonomous": {
            "chain_success": _mean([c.success for c in autonomous]),
            "step_success": _mean([bool(s.success) for c in autonomous for s in c.steps]),
            "chunks": sum(len(s.chunks) for c in autonomous for s in c.steps),
        },
        "gated": {
            "chain_success": _mean([c.success for c in gated]),
            "final_state_ok": _mean([c.final_state_ok for c in gated]),
            "completed": _mean([c.status == "completed" for c in gated]),
            "steps_finished_by_policy": sum(c.steps_by_policy for c in gated) / (n * N_STEPS),
            "touches_per_chain": sum(touches.values()) / n,
            "touches_per_chain_by_kind": {k: v / n for k, v in sorted(touches.items())},
            "escalations_per_chain": (touches["low_confidence"] + touches["stalled"]) / n,
            "verifications_per_chain": touches["verify"] / n,
            "decisions": dict(sum((Counter(c.decisions) for c in gated), Counter())),
            "operator_seconds_per_chain": _mean([c.operator_seconds for c in gated]),
            "robot_seconds_per_chain": _mean([c.robot_seconds for c in gated]),
            "low_confidence_chunks_actuated": sum(c.low_confidence_actuations for c in gated),
            "chunks_actuated": sum(c.chunks_actuated for c in gated),
            "chunks_flagged": sum(c.chunks_flagged for c in gated),
            "gate_misses_caught_at_checkpoints": sum(c.gate_misses for c in gated),
            "hand_placements": sum(c.hand_placements for c in gated),
            "policy_attempts": sum(c.policy_attempts for c in gated),
        },
        "gate_on_autonomous_steps": {
            "steps": scores.n_steps,
            "failed_steps": scores.n_failed,
            "flagged_steps": int(flagged_steps.sum()),
            "false_alarm_rate": _finite_or_none(gate_rates.false_alarm),
            "miss_rate": _finite_or_none(gate_rates.miss),
        },
        "auroc": {s: _finite_or_none(auroc(scores.values[s], scores.failed)) for s in SIGNALS},
        "thresholds": thresholds,
    }


def _mean(values: Sequence[float | bool]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _finite_or_none(value: float) -> float | None:
    return None if not math.isfinite(value) else round(float(value), 6)


def print_table(summary: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    a, g, gate = summary["autonomous"], summary["gated"], summary["gate_on_autonomous_steps"]
    table = Table(title=f"chain benchmark: {summary['chains']} chains × {summary['steps_per_chain']} steps")
    table.add_column("figure")
    table.add_column("autonomous", justify="right")
    table.add_column("gated", justify="right")
    table.add_row("chain success", f"{a['chain_success']:.1%}", f"{g['chain_success']:.1%}")
    table.add_row("steps done by the policy alone (judged success)", f"{a['step_success']:.1%}",
                  f"{g['steps_finished_by_policy']:.1%}")
    table.add_row("operator touches per chain", "0", f"{g['touches_per_chain']:.2f}")
    for kind, value in g["touches_per_chain_by_kind"].items():
        table.add_row(f"  {kind}", "", f"{value:.2f}")
    table.add_row("operator time per chain (sim s)", "0", f"{g['operator_seconds_per_chain']:.1f}")
    table.add_row("robot time per chain (sim s, incl. waits)", "", f"{g['robot_seconds_per_chain']:.1f}")
    table.add_row("low-confidence chunks actuated", "—", str(g["low_confidence_chunks_actuated"]))
    table.add_row("failed steps missed by the gate (caught at checkpoints)", "",
                  str(g["gate_misses_caught_at_checkpoints"]))
    table.add_row("blocks placed by hand (gripper could not reach)", "", str(g["hand_placements"]))
    table.add_row("gate miss rate on autonomous steps", _pct(gate["miss_rate"]), "")
    table.add_row("gate false-alarm rate on autonomous steps", _pct(gate["false_alarm_rate"]), "")
    for signal, value in summary["auroc"].items():
        table.add_row(f"AUROC {signal} (step failure)", "n/a" if value is None else f"{value:.3f}", "")
    console.print(table)


def markdown_table(summary: dict[str, Any]) -> str:
    """The headline figures as a Markdown table (written next to the JSON, pasted into docs/confidence.md)."""
    a, g, gate = summary["autonomous"], summary["gated"], summary["gate_on_autonomous_steps"]
    by_kind = ", ".join(f"{k} {v:.2f}" for k, v in g["touches_per_chain_by_kind"].items())
    rows = [
        ("chain success", f"{a['chain_success']:.1%}", f"**{g['chain_success']:.1%}**"),
        ("steps done by the policy alone (judged success)", f"{a['step_success']:.1%}",
         f"{g['steps_finished_by_policy']:.1%}"),
        ("operator touches per chain", "0", f"**{g['touches_per_chain']:.2f}** ({by_kind})"),
        ("operator time per chain (simulated s)", "0", f"{g['operator_seconds_per_chain']:.1f}"),
        ("low-confidence chunks actuated", "—", f"**{g['low_confidence_chunks_actuated']}**"
         f" (of {g['chunks_actuated']} chunks actuated)"),
        ("failed steps the gate let through (caught at checkpoints)", "—",
         str(g["gate_misses_caught_at_checkpoints"])),
        ("blocks placed by hand", "—", str(g["hand_placements"])),
        ("gate miss rate / false-alarm rate (autonomous steps)",
         f"{_pct(gate['miss_rate'])} / {_pct(gate['false_alarm_rate'])}", ""),
    ]
    rows += [(f"AUROC `{name}` for step failure", "n/a" if v is None else f"{v:.3f}", "")
             for name, v in summary["auroc"].items()]
    lines = ["| figure | autonomous | gated |", "|---|---|---|"]
    lines += [f"| {f} | {x} | {y} |" for f, x, y in rows]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def save_plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, g = summary["autonomous"], summary["gated"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    bars = axes[0].bar(["autonomous", "gated"], [a["chain_success"], g["chain_success"]], color=["#999", "#2a7"])
    axes[0].bar_label(bars, labels=[f"{v:.1%}" for v in (a["chain_success"], g["chain_success"])])
    axes[0].set_ylim(0, 1.1)
    axes[0].set_title(f"chain success ({summary['chains']} × {summary['steps_per_chain']}-step chains)")
    kinds = g["touches_per_chain_by_kind"]
    bottom = 0.0
    for kind, value in kinds.items():
        axes[1].bar(["gated"], [value], bottom=bottom, label=kind)
        bottom += value
    axes[1].set_title(f"operator touches per chain ({g['touches_per_chain']:.2f})")
    axes[1].legend()
    names = [s for s, v in summary["auroc"].items() if v is not None]
    values = [summary["auroc"][s] for s in names]
    bars = axes[2].bar(names, values, color="#47a")
    axes[2].bar_label(bars, labels=[f"{v:.2f}" for v in values])
    axes[2].axhline(0.5, color="k", lw=0.8, ls="--")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("AUROC of each signal for step failure")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- main


def resolve_thresholds(
    args: argparse.Namespace, bundle: Bundle, policy: PolicyRunner, monitor: ConfidenceMonitor,
    settings: ExecutorSettings, console: Any,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Thresholds from a file, the bundle, the defaults, or a calibration run on held-out chains (reported)."""
    from vla_edge.service import load_thresholds

    source = args.thresholds
    if source == "auto":
        source = "bundle" if bundle.manifest.confidence_thresholds else "calibrate"
    if source == "default":
        return dict(DEFAULT_THRESHOLDS), {"source": "default"}
    if source == "bundle":
        if not bundle.manifest.confidence_thresholds:
            raise SystemExit(f"bundle {bundle.path} has no calibrated thresholds; run `vla-edge calibrate` first")
        return dict(bundle.manifest.confidence_thresholds), {"source": "bundle"}
    if source != "calibrate":
        return load_thresholds(Path(source)), {"source": str(source)}
    console.print(f"calibrating on {args.calibration_chains} held-out chains (seed {args.calibration_seed}) "
                  f"for a target miss rate of {args.target_miss_rate:g} …")
    started = time.perf_counter()
    scores = step_scores(collect_autonomous(policy, monitor, args.calibration_chains, args.calibration_seed, settings))
    try:
        calibration = calibrate_miss_rate(scores, args.target_miss_rate, calibrated_signals(args.calibrate_jerk),
                                          fixed_thresholds(args.calibrate_jerk))
    except CalibrationError as exc:
        raise SystemExit(f"calibration failed: {exc}") from None
    info = {
        "source": "calibrate",
        "chains": args.calibration_chains,
        "seed": args.calibration_seed,
        "target_miss_rate": args.target_miss_rate,
        "signals": list(calibrated_signals(args.calibrate_jerk)),
        "level": calibration.level,
        "miss_bound": calibration.miss_bound,
        "calibration_false_alarm": calibration.calibration.false_alarm,
        "calibration_miss": calibration.calibration.miss,
        "steps": scores.n_steps,
        "failed_steps": scores.n_failed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return calibration.thresholds, info


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m bench.chain_benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=100)
    parser.add_argument("--seed", type=int, default=BENCH_SEED)
    parser.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE_DIR)
    parser.add_argument("--precision", choices=["fp32", "int8", "int4"], default="int8")
    parser.add_argument("--samples", type=int, default=8, help="K noise samples per chunk")
    parser.add_argument("--operator-delay-s", type=float, default=5.0, help="operator time charged per answer")
    parser.add_argument("--thresholds", default="auto",
                        help="auto (bundle's, else calibrate), bundle, default, calibrate, or a thresholds JSON file")
    parser.add_argument("--calibration-chains", type=int, default=100)
    parser.add_argument("--calibration-seed", type=int, default=CALIBRATION_SEED)
    parser.add_argument("--target-miss-rate", type=float, default=0.1)
    parser.add_argument("--calibrate-jerk", action="store_true",
                        help="fit the jerk threshold too (never below 1.05) instead of keeping the action space's")
    parser.add_argument("--out", type=Path, default=Path("bench/results/chain"))
    parser.add_argument("--quick", action="store_true", help="5 chains, default thresholds unless given (CI smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains = min(args.chains, 5)
        if args.thresholds == "auto":
            args.thresholds = "default"
    if args.seed == args.calibration_seed:
        parser.error("--seed and --calibration-seed must differ (held-out chains must not be benchmark chains)")

    console = Console()
    bundle, policy = open_policy(args.bundle, args.precision)
    settings = simulation_settings(bundle.manifest, num_samples=args.samples)
    monitor = base_monitor(bundle)
    thresholds, threshold_info = resolve_thresholds(args, bundle, policy, monitor, settings, console)
    monitor = monitor.with_thresholds(thresholds)

    autonomous: list[AutonomousChain] = []
    gated: list[GatedChain] = []
    timings = {"autonomous": 0.0, "gated": 0.0}
    with tempfile.TemporaryDirectory(prefix="vla-edge-bench-") as state_dir:
        for index in range(args.chains):
            setup = chain_setup(args.seed, index)
            started = time.perf_counter()
            autonomous.append(run_autonomous(setup, policy, monitor, settings))
            timings["autonomous"] += time.perf_counter() - started
            started = time.perf_counter()
            gated.append(run_gated(setup, policy, monitor, settings, Path(state_dir), args.operator_delay_s))
            timings["gated"] += time.perf_counter() - started
            if (index + 1) % 10 == 0 or index + 1 == args.chains:
                done_a = sum(c.success for c in autonomous) / len(autonomous)
                done_g = sum(c.success for c in gated) / len(gated)
                console.print(f"  {index + 1}/{args.chains} chains: autonomous {done_a:.0%}, gated {done_g:.0%}")

    summary = summarise(autonomous, gated, monitor.thresholds)  # type: ignore[arg-type]
    summary.update({
        "bundle": f"{bundle.manifest.name} {bundle.manifest.version}",
        "precision": args.precision,
        "num_samples": args.samples,
        "seed": args.seed,
        "operator_delay_s": args.operator_delay_s,
        "threshold_source": threshold_info,
        "wall_seconds": {k: round(v, 1) for k, v in timings.items()},
        "command": "python -m bench.chain_benchmark " + " ".join(argv if argv is not None else _argv()),
    })
    print_table(summary, console)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "chain_benchmark.json"
    chains_path = args.out / "chains.json"
    json_path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    chains_path.write_text(json.dumps(_per_chain(autonomous, gated), indent=1) + "\n", encoding="utf-8")
    png = save_plot(summary, args.out / "chain_benchmark.png")
    (args.out / "chain_benchmark.md").write_text(markdown_table(summary), encoding="utf-8")
    console.print(f"wrote {json_path}, {chains_path} and {png}")
    return 0


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


def _per_chain(autonomous: Sequence[AutonomousChain], gated: Sequence[GatedChain]) -> list[dict[str, Any]]:
    rows = []
    for a, g in zip(autonomous, gated, strict=True):
        rows.append({
            "index": a.index,
            "autonomous_success": a.success,
            "autonomous_failed_steps": [s.step for s in a.steps if not s.success],
            "autonomous_step_signal_max": [{k: round(v, 5) for k, v in s.signal_max().items()} for s in a.steps],
            "gated_success": g.success,
            "gated_status": g.status,
            "touches": g.touches,
            "decisions": g.decisions,
            "operator_seconds": round(g.operator_seconds, 2),
            "low_confidence_actuations": g.low_confidence_actuations,
            "gate_misses": g.gate_misses,
        })
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
