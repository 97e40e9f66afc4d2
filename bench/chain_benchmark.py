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
import dataclasses
import json
import math
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hil.world import CONTROL_RATE_HZ, TabletopWorld
from vla_edge.bundle import Bundle
from vla_edge.calibration import (
    CalibrationError,
    auroc,
    calibrate_miss_rate,
    calibrated_signals,
    fit_failure_score,
    fixed_thresholds,
    gate_flags,
    precision_recall,
)
from vla_edge.checkpoint import CheckpointStore
from vla_edge.confidence import DEFAULT_THRESHOLDS, SIGNALS, ConfidenceMonitor
from vla_edge.config import Settings, TaskSettings
from vla_edge.executor import ExecutorSettings
from vla_edge.operator.escalation import Decision, Escalation, EscalationQueue
from vla_edge.paths import REFERENCE_BUNDLE_DIR, REFERENCE_VERIFIER_DIR
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
    chunk_steps,
    simulation_settings,
    step_scores,
)
from vla_edge.task import SceneVerifier, TaskEvent, TaskRunner, TaskSpec

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
    counters: dict[str, int] = field(default_factory=dict)  # the task runner's (retries, automatic verifications)
    resamples: int = 0  # refused chunks re-sampled by the executor
    recovered: int = 0  # refusals replaced by a passing re-sample (no escalation)
    verifications: list[tuple[str, bool, bool, bool]] = field(default_factory=list)  # (scope, ok, sure, truth)
    final_mismatches: int = 0  # blocks not where the plan wants them at the end: failed steps let through
    accepted_failures: int = 0  # failed policy attempts that neither the gate nor a verifier stopped


def run_gated(
    setup: ChainSetup,
    policy: PolicyRunner,
    monitor: ConfidenceMonitor,
    settings: ExecutorSettings,
    state_dir: Path,
    operator_delay_s: float,
    router=None,
    verifier: SceneVerifier | None = None,
    step_retries: int = 0,
) -> GatedChain:
    """One chain through the real task runner: checkpoints every 4 steps, the scripted operator answering.
    ``verifier``: the automatic scene verifier after each step and at checkpoints; ``step_retries``: autonomous
    re-runs of a step that stalled or that the verifier is sure failed (``settings.resample_tries``: re-samples of a
    refused chunk, in the executor)."""
    robot = robot_for(setup, policy, monitor, settings, router)
    try:
        return _run_gated(setup, robot, settings, state_dir, operator_delay_s, verifier, step_retries)
    finally:
        robot.close()


def _run_gated(setup: ChainSetup, robot: SimulatedRobot, settings: ExecutorSettings, state_dir: Path,
               operator_delay_s: float, verifier: SceneVerifier | None, step_retries: int) -> GatedChain:
    world = robot.world
    plan = plan_bins(world, setup.chain)
    operator = ScriptedOperator(robot, plan, operator_delay_s)
    task_settings = TaskSettings(checkpoint_every=CHECKPOINT_EVERY, verify_at_checkpoint=True, state_dir=state_dir,
                                 step_timeout_s=settings.step_timeout_s)
    steps = tuple(s.instruction for s in setup.chain)
    spec = TaskSpec(task_id=f"bench-{setup.noise_seed[0]}-{setup.index}", steps=steps)
    audit: list[tuple[str, bool, bool, bool]] = []

    def on_event(event: TaskEvent) -> None:
        robot.on_event(event)
        if event.kind == "verified" and event.step_index is not None:
            # What the verifier decided, against the simulator's truth (never shown to the verifier).
            scope = str(event.detail["scope"])
            if scope == "step":
                truth = bool(robot.outcomes.get(event.step_index, (False, ""))[0])
            else:
                truth = not scene_mismatch(world, plan[event.step_index])
            audit.append((scope, bool(event.detail["ok"]), bool(event.detail["sure"]), truth))

    runner = TaskRunner(spec, robot, AnsweredQueue(operator), CheckpointStore(state_dir), task_settings,
                        answer_timeout_s=1.0, events=on_event, scene_verifier=verifier, step_retries=step_retries)
    result = runner.run(threading.Event())
    mismatches = scene_mismatch(world, plan[-1])
    final_ok = not mismatches
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
        counters=dict(result.counters),
        resamples=robot.executor.scheduler.counters.resamples,
        recovered=robot.executor.scheduler.counters.recovered,
        verifications=audit,
        final_mismatches=len(mismatches),
        accepted_failures=_accepted_failures(robot.runs, audit),
    )


def _accepted_failures(runs: list[StepRun], audit: list[tuple[str, bool, bool, bool]]) -> int:
    """Failed policy attempts that ended "done" and were not sent back: the gate let them through and no
    automatic check was sure they failed (a human at a checkpoint may still catch them)."""
    failed_done = sum(1 for r in runs if r.driver == "policy" and r.outcome == "done" and r.success is False)
    caught = sum(1 for scope, ok, sure, truth in audit if scope == "step" and not truth and sure and not ok)
    return max(0, failed_done - caught)


# ------------------------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Arrangement:
    """What the robot may do by itself before asking, and what checks its work."""

    name: str
    recovery: bool  # re-sample a refused chunk; retry a stalled or verifier-failed step
    verifier: bool  # the automatic scene verifier after each step and at checkpoints
    remote: bool = False  # the remote tier (Triton) when the local verdict fails


ARRANGEMENTS = {
    a.name: a for a in (
        Arrangement("gated", recovery=False, verifier=False),
        Arrangement("gated+recovery", recovery=True, verifier=False),
        Arrangement("gated+recovery+verifier", recovery=True, verifier=True),
        Arrangement("gated+remote", recovery=False, verifier=False, remote=True),
        Arrangement("gated+recovery+verifier+remote", recovery=True, verifier=True, remote=True),
    )
}
DEFAULT_ARRANGEMENTS = ("gated", "gated+recovery", "gated+recovery+verifier")


@dataclass
class Bench:
    """Everything a chain run needs besides the chain: policy, gate, verifier, router, recovery settings."""

    policy: PolicyRunner
    monitor: ConfidenceMonitor
    settings: ExecutorSettings  # recovery off; an arrangement with recovery turns re-sampling on
    resample_tries: int
    step_retries: int
    operator_delay_s: float
    state_dir: Path
    verifier: SceneVerifier | None = None
    router: Any = None

    def run(self, setup: ChainSetup, arrangement: Arrangement) -> GatedChain:
        settings = self.settings
        if arrangement.recovery:
            settings = dataclasses.replace(settings, resample_tries=self.resample_tries)
        if arrangement.verifier and self.verifier is None:
            raise SystemExit(f"{arrangement.name} needs a verifier bundle (--verifier)")
        if arrangement.remote and self.router is None:
            raise SystemExit(f"{arrangement.name} needs the remote tier (--remote)")
        return run_gated(setup, self.policy, self.monitor, settings, self.state_dir / arrangement.name,
                         self.operator_delay_s, router=self.router if arrangement.remote else None,
                         verifier=self.verifier if arrangement.verifier else None,
                         step_retries=self.step_retries if arrangement.recovery else 0)


# ------------------------------------------------------------------------------------------- summary


def gated_figures(gated: Sequence[GatedChain]) -> dict[str, Any]:
    n = len(gated)
    touches: Counter[str] = Counter()
    for chain in gated:
        touches.update(chain.touches)
    audit = [v for chain in gated for v in chain.verifications]
    failed_windows = [v for v in audit if not v[3]]
    good_windows = [v for v in audit if v[3]]
    counters: Counter[str] = Counter()
    for chain in gated:
        counters.update(chain.counters)
    return {
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
        "resamples_per_chain": sum(c.resamples for c in gated) / n,
        "refusals_recovered_per_chain": sum(c.recovered for c in gated) / n,
        "step_retries_per_chain": counters["autonomous_retries"] / n,
        "checkpoints_verified_automatically_per_chain": counters["verified_automatically"] / n,
        "failed_policy_steps_accepted": sum(c.accepted_failures for c in gated),
        "failed_steps_let_through": sum(c.final_mismatches for c in gated),
        "failed_steps_let_through_rate": sum(c.final_mismatches for c in gated) / (n * N_STEPS),
        "verifier": {
            "decisions": len(audit),
            "failed_windows": len(failed_windows),
            "false_accepts": sum(1 for v in failed_windows if v[1] and v[2]),
            "false_accept_rate": _ratio(sum(1 for v in failed_windows if v[1] and v[2]), len(failed_windows)),
            "false_reject_rate": _ratio(sum(1 for v in good_windows if not v[1] and v[2]), len(good_windows)),
            "unsure_rate": _ratio(sum(1 for v in audit if not v[2]), len(audit)),
        } if audit else None,
    }


def summarise(
    autonomous: Sequence[AutonomousChain], configs: dict[str, Sequence[GatedChain]], thresholds: dict[str, float]
) -> dict[str, Any]:
    n = len(autonomous)
    scores = step_scores(autonomous)
    steps = chunk_steps(autonomous)
    flagged = gate_flags(steps, thresholds)
    failed = steps.failed.astype(bool)
    precision, recall = precision_recall(flagged, failed)
    summary = {
        "chains": n,
        "steps_per_chain": N_STEPS,
        "autonomous": {
            "chain_success": _mean([c.success for c in autonomous]),
            "step_success": _mean([bool(s.success) for c in autonomous for s in c.steps]),
            "chunks": sum(len(s.chunks) for c in autonomous for s in c.steps),
        },
        "configs": {name: gated_figures(chains) for name, chains in configs.items()},
        "gate_on_autonomous_steps": {
            "steps": int(failed.size),
            "failed_steps": int(failed.sum()),
            "flagged_steps": int(flagged.sum()),
            "false_alarm_rate": _finite_or_none(float(flagged[~failed].mean()) if (~failed).any() else math.nan),
            "miss_rate": _finite_or_none(float((~flagged[failed]).mean()) if failed.any() else math.nan),
            "precision": _finite_or_none(precision),
            "recall": _finite_or_none(recall),
        },
        "auroc": {s: _finite_or_none(auroc(scores.values[s], scores.failed)) for s in SIGNALS},
        "thresholds": thresholds,
    }
    if "gated" in summary["configs"]:
        summary["gated"] = summary["configs"]["gated"]
    return summary


def _ratio(a: int, b: int) -> float | None:
    return None if b == 0 else round(a / b, 6)


def _mean(values: Sequence[float | bool]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _finite_or_none(value: float) -> float | None:
    return None if not math.isfinite(value) else round(float(value), 6)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _rows(summary: dict[str, Any]) -> tuple[list[str], list[tuple[str, ...]]]:
    """The table: one column per arrangement (autonomous first), one row per figure."""
    a, gate = summary["autonomous"], summary["gate_on_autonomous_steps"]
    names = list(summary["configs"])
    configs = [summary["configs"][k] for k in names]
    kinds = sorted({k for c in configs for k in c["touches_per_chain_by_kind"]})

    def row(label: str, auto: str, per: Any) -> tuple[str, ...]:
        return (label, auto, *[per(c) for c in configs])

    rows = [
        row("chain success", f"{a['chain_success']:.1%}", lambda c: f"{c['chain_success']:.1%}"),
        row("operator touches per chain", "0", lambda c: f"{c['touches_per_chain']:.2f}"),
        *[row(f"  {k}", "", lambda c, k=k: f"{c['touches_per_chain_by_kind'].get(k, 0.0):.2f}") for k in kinds],
        row("steps finished by the policy (judged success)", f"{a['step_success']:.1%}",
            lambda c: f"{c['steps_finished_by_policy']:.1%}"),
        row("refused chunks re-sampled / recovered per chain", "—",
            lambda c: f"{c['resamples_per_chain']:.2f} / {c['refusals_recovered_per_chain']:.2f}"),
        row("autonomous step retries per chain", "—", lambda c: f"{c['step_retries_per_chain']:.2f}"),
        row("checkpoints verified automatically per chain", "—",
            lambda c: f"{c['checkpoints_verified_automatically_per_chain']:.2f}"),
        row("verifier false accepts / failed windows", "—",
            lambda c: "—" if c["verifier"] is None else
            f"{c['verifier']['false_accepts']} / {c['verifier']['failed_windows']}"),
        row("verifier unsure (a person asked)", "—",
            lambda c: "—" if c["verifier"] is None else _pct(c["verifier"]["unsure_rate"])),
        row("low-confidence chunks actuated", "—", lambda c: str(c["low_confidence_chunks_actuated"])),
        row("failed steps let through to the end of the chain", "—",
            lambda c: f"{c['failed_steps_let_through']} ({c['failed_steps_let_through_rate']:.2%})"),
        row("operator time per chain (simulated s)", "0", lambda c: f"{c['operator_seconds_per_chain']:.1f}"),
        row("robot time per chain (simulated s, incl. waits)", "", lambda c: f"{c['robot_seconds_per_chain']:.1f}"),
        row("blocks placed by hand", "", lambda c: str(c["hand_placements"])),
        ("gate on autonomous steps: precision / recall", f"{_pct(gate['precision'])} / {_pct(gate['recall'])}",
         *[""] * len(configs)),
        ("gate on autonomous steps: miss / false-alarm rate",
         f"{_pct(gate['miss_rate'])} / {_pct(gate['false_alarm_rate'])}", *[""] * len(configs)),
    ]
    for name, value in summary["auroc"].items():
        rows.append((f"AUROC {name} (step failure)", "n/a" if value is None else f"{value:.3f}",
                     *[""] * len(configs)))
    return ["figure", "autonomous", *names], rows


def print_table(summary: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    header, rows = _rows(summary)
    table = Table(title=f"chain benchmark: {summary['chains']} chains × {summary['steps_per_chain']} steps")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def markdown_table(summary: dict[str, Any]) -> str:
    """The headline figures as a Markdown table (written next to the JSON, pasted into docs/confidence.md)."""
    header, rows = _rows(summary)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = summary["autonomous"]
    names = ["autonomous", *summary["configs"]]
    success = [a["chain_success"], *[c["chain_success"] for c in summary["configs"].values()]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    bars = axes[0].bar(range(len(names)), success, color=["#999", *["#2a7"] * (len(names) - 1)])
    axes[0].bar_label(bars, labels=[f"{v:.1%}" for v in success])
    axes[0].set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    axes[0].set_ylim(0, 1.1)
    axes[0].set_title(f"chain success ({summary['chains']} × {summary['steps_per_chain']}-step chains)")
    kinds = sorted({k for c in summary["configs"].values() for k in c["touches_per_chain_by_kind"]})
    bottom = np.zeros(len(summary["configs"]))
    for kind in kinds:
        values = np.array([c["touches_per_chain_by_kind"].get(kind, 0.0) for c in summary["configs"].values()])
        axes[1].bar(range(len(bottom)), values, bottom=bottom, label=kind)
        bottom += values
    axes[1].set_xticks(range(len(bottom)), list(summary["configs"]), rotation=20, ha="right", fontsize=8)
    axes[1].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[1].set_title("operator touches per chain (target <= 1)")
    axes[1].legend(fontsize=8)
    signals = [s for s, v in summary["auroc"].items() if v is not None]
    values = [summary["auroc"][s] for s in signals]
    bars = axes[2].bar(signals, values, color="#47a")
    axes[2].bar_label(bars, labels=[f"{v:.2f}" for v in values])
    axes[2].axhline(0.5, color="k", lw=0.8, ls="--")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("AUROC of each signal for step failure")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- the trade-off


def pareto_front(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both fewer touches and higher chain success."""
    front = []
    for p in points:
        dominated = any(q["touches_per_chain"] <= p["touches_per_chain"] and q["chain_success"] >= p["chain_success"]
                        and (q["touches_per_chain"], q["chain_success"]) != (p["touches_per_chain"],
                                                                             p["chain_success"])
                        for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p["touches_per_chain"])


def save_pareto(points: Sequence[dict[str, Any]], autonomous_success: float, default: dict[str, Any] | None,
                path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = {"gated": "#d62", "gated+recovery": "#e9a13b", "gated+recovery+verifier": "#2a7",
               "gated+remote": "#a5c", "gated+recovery+verifier+remote": "#27a"}
    for name in dict.fromkeys(p["arrangement"] for p in points):
        mine = sorted((p for p in points if p["arrangement"] == name), key=lambda p: p["touches_per_chain"])
        ax.plot([p["touches_per_chain"] for p in mine], [p["chain_success"] for p in mine], "o-", ms=5, lw=1,
                color=colours.get(name), label=name, alpha=0.85)
    front = pareto_front(points)
    ax.step([p["touches_per_chain"] for p in front], [p["chain_success"] for p in front], where="post", color="k",
            lw=0.8, ls=":", label="Pareto front")
    ax.scatter([0.0], [autonomous_success], marker="s", color="#777", s=50, label="autonomous (no gate)", zorder=3)
    if default is not None:
        ax.scatter([default["touches_per_chain"]], [default["chain_success"]], marker="*", s=260, color="gold",
                   edgecolor="k", zorder=4, label=f"default: {default['label']}")
    ax.axhline(0.99, color="#2a7", lw=0.7, ls="--")
    ax.axvline(1.0, color="#2a7", lw=0.7, ls="--")
    ax.set_xlabel("operator touches per chain")
    ax.set_ylabel("chain success")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(left=-0.1)
    ax.set_ylim(min(0.7, autonomous_success - 0.05), 1.005)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
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
    chains = collect_autonomous(policy, monitor, args.calibration_chains, args.calibration_seed, settings)
    try:
        if args.gate == "score":
            fit = fit_failure_score(chunk_steps(chains), args.target_miss_rate, fixed=fixed_thresholds(True))
            thresholds, figures = fit.thresholds, {"weights": dict(fit.score.weights), "miss_bound": fit.level_bound,
                                                   "calibration_false_alarm": fit.calibration.false_alarm,
                                                   "calibration_miss": fit.calibration.miss}
        else:
            scores = step_scores(chains)
            calibration = calibrate_miss_rate(scores, args.target_miss_rate, calibrated_signals(args.calibrate_jerk),
                                              fixed_thresholds(args.calibrate_jerk))
            thresholds, figures = calibration.thresholds, {
                "level": calibration.level, "miss_bound": calibration.miss_bound,
                "calibration_false_alarm": calibration.calibration.false_alarm,
                "calibration_miss": calibration.calibration.miss}
    except CalibrationError as exc:
        raise SystemExit(f"calibration failed: {exc}") from None
    info = {"source": "calibrate", "gate": args.gate, "chains": args.calibration_chains, "seed": args.calibration_seed,
            "target_miss_rate": args.target_miss_rate, **figures, "seconds": round(time.perf_counter() - started, 1)}
    return thresholds, info


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m bench.chain_benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=100)
    parser.add_argument("--seed", type=int, default=BENCH_SEED,
                        help="seed root of the chains (docs/evaluation-seeds.md: 7101-7103 are for reported figures)")
    parser.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE_DIR)
    parser.add_argument("--precision", choices=["fp32", "int8", "int4"], default="int8")
    parser.add_argument("--samples", type=int, default=8, help="K noise samples per chunk")
    parser.add_argument("--operator-delay-s", type=float, default=5.0, help="operator time charged per answer")
    parser.add_argument("--thresholds", default="auto",
                        help="auto (bundle's, else calibrate), bundle, default, calibrate, or a thresholds JSON file")
    parser.add_argument("--gate", choices=["score", "per-signal"], default="score",
                        help="with --thresholds calibrate: fit the combined failure score, or per-signal thresholds")
    parser.add_argument("--calibration-chains", type=int, default=100)
    parser.add_argument("--calibration-seed", type=int, default=CALIBRATION_SEED)
    parser.add_argument("--target-miss-rate", type=float, default=0.1)
    parser.add_argument("--calibrate-jerk", action="store_true",
                        help="fit the jerk threshold too (never below 1.05) instead of keeping the action space's")
    parser.add_argument("--arrangements", default=",".join(DEFAULT_ARRANGEMENTS),
                        help=f"comma-separated, from: {', '.join(ARRANGEMENTS)}")
    parser.add_argument("--verifier", type=Path, default=REFERENCE_VERIFIER_DIR,
                        help="checkpoint verifier bundle (for the +verifier arrangements)")
    parser.add_argument("--accept-threshold", type=float, default=None, help="override the verifier's")
    parser.add_argument("--resample-tries", type=int, default=None, help="default: recovery.resample_tries")
    parser.add_argument("--step-retries", type=int, default=None, help="default: recovery.step_retries")
    parser.add_argument("--remote-bundle", type=Path, default=None,
                        help="for the +remote arrangements: serve this bundle on a local Triton server")
    parser.add_argument("--out", type=Path, default=Path("bench/results/chain"))
    parser.add_argument("--quick", action="store_true", help="5 chains, default thresholds unless given (CI smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains = min(args.chains, 5)
        if args.thresholds == "auto":
            args.thresholds = "default"
    if args.seed == args.calibration_seed:
        parser.error("--seed and --calibration-seed must differ (held-out chains must not be benchmark chains)")
    arrangements = [a.strip() for a in args.arrangements.split(",") if a.strip()]
    unknown = [a for a in arrangements if a not in ARRANGEMENTS]
    if unknown:
        parser.error(f"unknown arrangement(s) {', '.join(unknown)}; choose from {', '.join(ARRANGEMENTS)}")

    console = Console(width=170)
    bundle, policy = open_policy(args.bundle, args.precision)
    defaults = Settings()
    settings = simulation_settings(bundle.manifest, num_samples=args.samples, resample_tries=0)
    monitor = base_monitor(bundle)
    thresholds, threshold_info = resolve_thresholds(args, bundle, policy, monitor, settings, console)
    monitor = monitor.with_thresholds(thresholds)
    verifier = None
    if any(ARRANGEMENTS[a].verifier for a in arrangements):
        from vla_edge.verifier import CheckpointVerifier

        verifier = CheckpointVerifier(args.verifier, accept_threshold=args.accept_threshold)
    autonomous: list[AutonomousChain] = []
    configs: dict[str, list[GatedChain]] = {a: [] for a in arrangements}
    timings = {"autonomous": 0.0, **{a: 0.0 for a in arrangements}}
    with tempfile.TemporaryDirectory(prefix="vla-edge-bench-") as state_dir, RemoteTier(args, bundle) as remote:
        bench = Bench(policy, monitor, settings,
                      args.resample_tries if args.resample_tries is not None else defaults.recovery.resample_tries,
                      args.step_retries if args.step_retries is not None else defaults.recovery.step_retries,
                      args.operator_delay_s, Path(state_dir), verifier,
                      remote.planner(monitor) if any(ARRANGEMENTS[a].remote for a in arrangements) else None)
        for index in range(args.chains):
            setup = chain_setup(args.seed, index)
            started = time.perf_counter()
            autonomous.append(run_autonomous(setup, policy, monitor, settings))
            timings["autonomous"] += time.perf_counter() - started
            for name in arrangements:
                started = time.perf_counter()
                configs[name].append(bench.run(setup, ARRANGEMENTS[name]))
                timings[name] += time.perf_counter() - started
            if (index + 1) % 10 == 0 or index + 1 == args.chains:
                done = ", ".join(f"{k} {np.mean([c.success for c in v]):.0%}" for k, v in configs.items())
                console.print(f"  {index + 1}/{args.chains} chains: autonomous "
                              f"{np.mean([c.success for c in autonomous]):.0%}, {done}")

    summary = summarise(autonomous, configs, monitor.thresholds)  # type: ignore[arg-type]
    summary.update({
        "bundle": f"{bundle.manifest.name} {bundle.manifest.version}",
        "precision": args.precision,
        "num_samples": args.samples,
        "seed": args.seed,
        "operator_delay_s": args.operator_delay_s,
        "threshold_source": threshold_info,
        "recovery": {"resample_tries": bench.resample_tries, "step_retries": bench.step_retries},
        "verifier_bundle": None if verifier is None else {
            "name": verifier.name, "accept_threshold": verifier.accept_threshold,
            "reject_threshold": verifier.reject_threshold},
        "wall_seconds": {k: round(v, 1) for k, v in timings.items()},
        "command": "python -m bench.chain_benchmark " + " ".join(argv if argv is not None else _argv()),
    })
    print_table(summary, console)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "chain_benchmark.json"
    chains_path = args.out / "chains.json"
    json_path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    chains_path.write_text(json.dumps(_per_chain(autonomous, configs), indent=1) + "\n", encoding="utf-8")
    png = save_plot(summary, args.out / "chain_benchmark.png")
    (args.out / "chain_benchmark.md").write_text(markdown_table(summary), encoding="utf-8")
    console.print(f"wrote {json_path}, {chains_path} and {png}")
    return 0


class RemoteTier:
    """A Triton server on the remote bundle for the +remote arrangements (``--remote-bundle``); nothing otherwise."""

    def __init__(self, args: argparse.Namespace, bundle: Bundle) -> None:
        self.args, self.bundle, self.server, self._planners = args, bundle, None, []

    def __enter__(self) -> RemoteTier:
        return self

    def planner(self, monitor: ConfidenceMonitor):
        """The daemon's TieredPlanner for ``monitor``'s gate, on the one server (started at the first call)."""
        from bench.tier_benchmark import TritonServe
        from vla_edge.remote import RemotePolicyClient
        from vla_edge.routing import TieredPlanner, output_limits

        if self.args.remote_bundle is None:
            raise SystemExit("the +remote arrangements need --remote-bundle (e.g. models/bundles/remote)")
        if self.server is None:
            self.args.out.mkdir(parents=True, exist_ok=True)
            self.server = TritonServe(self.args.remote_bundle, self.args.out / "triton.log")
        client = RemotePolicyClient(self.server.url, "vla_remote", 200.0, output_limits(self.bundle.manifest))
        if not client.wait_ready(180.0):
            raise SystemExit(f"the Triton server was not ready in 180 s; see {self.args.out / 'triton.log'}")
        planner = TieredPlanner(client, monitor, seed=self.args.seed)
        self._planners.append(planner)
        return planner

    def __exit__(self, *exc: object) -> None:
        for planner in self._planners:
            planner.close()
        if self.server is not None:
            self.server.close()


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


def _per_chain(autonomous: Sequence[AutonomousChain], configs: dict[str, Sequence[GatedChain]]) -> list[dict[str, Any]]:
    rows = []
    for i, a in enumerate(autonomous):
        row: dict[str, Any] = {
            "index": a.index,
            "autonomous_success": a.success,
            "autonomous_failed_steps": [s.step for s in a.steps if not s.success],
            "autonomous_step_signal_max": [{k: round(v, 5) for k, v in s.signal_max().items()} for s in a.steps],
        }
        for name, chains in configs.items():
            g = chains[i]
            row[name] = {
                "success": g.success, "status": g.status, "touches": g.touches, "decisions": g.decisions,
                "operator_seconds": round(g.operator_seconds, 2), "low_confidence_actuations":
                g.low_confidence_actuations, "gate_misses": g.gate_misses, "retries": g.counters.get(
                    "autonomous_retries", 0), "resamples": g.resamples, "final_mismatches": g.final_mismatches,
            }
        if "gated" in configs:  # the layout older comparisons read
            g = configs["gated"][i]
            row.update({"gated_success": g.success, "gated_status": g.status, "touches": g.touches})
        rows.append(row)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
