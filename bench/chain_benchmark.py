"""The headline reliability benchmark: ten-step chains, autonomous vs gated, on the reference world.

    python -m bench.chain_benchmark --chains 100 --out bench/results/chain     # ~minutes on 2 cores
    python -m bench.chain_benchmark --quick --out /tmp/chain                   # 5 chains, CI smoke

Both modes run the SAME chains (layouts, instructions) with the SAME policy noise, in simulated time:

* **autonomous**: the policy alone; every chunk is actuated whatever its verdict. A failed step is finished by
  the scripted expert only so the next step starts where the chain expects (the chain already counts as failed).
  Its steps give each signal's AUROC for predicting step failure and the gate's would-be miss/false-alarm rates.
* **gated**: the real ``TaskRunner`` (checkpoints every 4 steps with operator verification), the real
  ``EscalationQueue`` and the real ``ConfidenceMonitor`` on every chunk; a failed verdict holds the arm and
  escalates. A simulated operator answers at once in wall time but is charged ``--operator-delay-s`` of
  operator time per answer: it looks at the world (the judge), approves a verification when every covered
  step succeeded, and otherwise takes over and finishes the step with the scripted expert (also charged).

What runs for real: ONNX Runtime (``PolicyRunner``, K noise samples per chunk), ``select_chunk``,
``ConfidenceMonitor`` (built by the daemon's own ``build_monitor``), ``TaskRunner``, ``EscalationQueue``,
``CheckpointStore``, the pymunk world and its judge. What is re-implemented: the executor's receding-horizon
timing (``SimTimeExecutor`` mirrors ``PolicyStepExecutor`` + ``ChunkScheduler``: with ``scheduler.plan_ahead``,
the default, the next chunk is planned from the frame taken after the last action and arrives before the next tick,
so each chunk runs its actions 0..H-r-1; with ``boundary="freeze"`` or without plan-ahead, a one-tick inference
delay: each chunk runs its actions 1..H-r-1, then its action H-r is committed (with freeze, passed as the next
chunk's frozen prefix) while that chunk is computed), and the operator (``ScriptedOperator`` answers as ``hil.harness.SimulatedOperator``
does, without threads). Simulated time makes 100 chains take minutes instead of the ~50 min of real time.
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
from typing import Any, Literal

import numpy as np

from hil.expert import ScriptedExpert
from hil.tasks import Step, explain_step, make_chain, parse_instruction
from hil.world import BIN_RECTS, CONTROL_RATE_HZ, TabletopWorld
from vla_edge.bundle import Bundle, load_bundle
from vla_edge.calibration import (
    CALIBRATED_SIGNALS,
    CalibrationError,
    StepScores,
    auroc,
    calibrate_miss_rate,
    rates,
)
from vla_edge.checkpoint import CheckpointStore
from vla_edge.confidence import DEFAULT_THRESHOLDS, SIGNALS, ChunkContext, ConfidenceMonitor, select_chunk
from vla_edge.config import ConfidenceSettings, Settings, TaskSettings
from vla_edge.operator.escalation import Decision, Escalation, EscalationQueue, TeleopChannel
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.policy import PolicyRunner
from vla_edge.task import StepReport, TaskEvent, TaskRunner, TaskSpec
from vla_edge.types import ChunkSamples

DONE_INDEX = 3
N_STEPS = 10
CHECKPOINT_EVERY = 4
REPAIR_MAX_TICKS = 150
HAND_PLACEMENT_S = 15.0  # operator time charged when the gripper cannot reach a block and a person places it
BENCH_SEED = 0
CALIBRATION_SEED = 1000  # held-out chains: a different seed root, so no layout/chain of the benchmark is reused


# ------------------------------------------------------------------------------------------- records


@dataclass
class ChunkRecord:
    """One planned chunk: its signal values, its verdict, and how many of its actions reached the world."""

    step: int
    values: dict[str, float]
    passed: bool
    approved: bool = False
    actuated: int = 0


@dataclass
class StepRun:
    """One attempt at a step: by the policy (``run_step``) or by the operator/expert (``teleoperate``/repair)."""

    step: int
    driver: Literal["policy", "operator", "measurement_repair"]
    outcome: str
    success: bool | None  # the judge's verdict when the attempt ended "done"; None otherwise
    reason: str
    ticks: int
    chunks: list[ChunkRecord] = field(default_factory=list)

    def signal_max(self) -> dict[str, float]:
        if not self.chunks:
            return {}
        return {name: max(c.values.get(name, 0.0) for c in self.chunks) for name in self.chunks[0].values}

    def flagged(self) -> bool:
        return any(not c.passed for c in self.chunks)


@dataclass(frozen=True)
class LoopSettings:
    num_samples: int = 8
    replan_when_remaining: int = 4
    max_ticks: int = 120  # task.step_timeout_s (12 s) at 10 Hz
    gate: bool = True
    boundary: Literal["none", "freeze"] = "none"  # scheduler.boundary: freeze passes the committed action as prefix
    plan_ahead: bool = True  # scheduler.plan_ahead: plan from the frame after the last action; row 0 runs


# ------------------------------------------------------------------------------------------- executor


class SimTimeExecutor:
    """A `vla_edge.task.StepExecutor` on the simulated world, stepped directly (no sockets, no real time)."""

    def __init__(
        self,
        world: TabletopWorld,
        policy: PolicyRunner,
        monitor: ConfidenceMonitor,
        settings: LoopSettings,
        noise_rng: np.random.Generator,
        expert_rng: np.random.Generator,
    ) -> None:
        if not 1 <= settings.replan_when_remaining < policy.horizon:
            raise ValueError(f"replan_when_remaining must be in [1, {policy.horizon - 1}]")
        self.world = world
        self.policy = policy
        self.monitor = monitor
        self.settings = settings
        self._noise_rng = noise_rng
        self._expert_rng = expert_rng
        self.runs: list[StepRun] = []
        self.outcomes: dict[int, tuple[bool, str]] = {}
        self.resolved_by: dict[int, str] = {}  # who finished each step last: "policy" or "operator"
        self.bins_before: dict[int, dict[str, str | None]] = {}
        self.robot_ticks = 0
        self.operator_ticks = 0
        self.hand_placements = 0  # blocks the expert could not move (e.g. pushed off the table), placed by hand
        self.low_confidence_actuations = 0  # actions from a chunk that neither passed nor was approved (must be 0)
        self.holds: Counter[str] = Counter()
        # Set by the operator before a verification take-over: the bins the chain's plan wants at the checkpoint.
        self.scene_targets: dict[int, dict[str, str]] = {}

    # -- StepExecutor ------------------------------------------------------------------------------------------
    def run_step(
        self, step_index: int, instruction: str, stop: threading.Event, *, override_once: bool = False
    ) -> StepReport:
        step = parse_instruction(instruction)
        self.bins_before.setdefault(step_index, self.world.block_bins())
        run = StepRun(step_index, "policy", "stalled", None, "", 0)
        self.runs.append(run)
        h, r = self.policy.horizon, self.settings.replan_when_remaining
        # Planned ahead (the daemon's default): each chunk is planned from the frame after the last action and is
        # ready before the next tick, so it runs rows 0..h-r-1. Otherwise one tick of inference delay: the action
        # committed for that tick runs while the chunk is computed, and the chunk runs rows 1..h-r-1.
        ahead = self.settings.plan_ahead and self.settings.boundary == "none"
        first_row = 0 if ahead else 1
        prefix: np.ndarray | None = None  # the committed action that runs while the next chunk is computed
        owner: ChunkRecord | None = None  # the chunk it belongs to
        last: np.ndarray | None = None  # the last action executed
        previous: ChunkSamples | None = None
        previous_start = 0
        override = override_once
        self.policy.set_instruction(instruction)
        if ahead and not stop.is_set():  # the step's first tick holds while the first chunk is planned
            self.world.hold()
            self._tick(run)
        while run.ticks < self.settings.max_ticks:
            if stop.is_set():
                return self._end(run, "stopped", "stop requested")
            image, state, start_tick = self.world.render(), self.world.state(), run.ticks
            if not ahead:
                if prefix is None:
                    self.world.hold()
                    self._tick(run)
                else:
                    self._actuate(prefix, owner, run)  # type: ignore[arg-type]
                    last = prefix
                    if prefix[DONE_INDEX] > 0.5:
                        return self._done(run, step)
            frozen = prefix[None] if prefix is not None and self.settings.boundary == "freeze" else None
            samples = self.policy.sample(
                self.policy.encode(image, state),
                self.settings.num_samples,
                frozen,
                noise=self._noise_rng.standard_normal(
                    (self.settings.num_samples, h, self.policy.action_dim), dtype=np.float32
                ),
            )
            chunk = select_chunk(samples.actions)
            context = ChunkContext(previous, previous_start, start_tick, last)
            verdict = self.monitor.evaluate(samples, chunk, context)
            approved = override and not verdict.passed  # the operator saw this refusal and said go, once
            record = ChunkRecord(step_index, dict(verdict.score), verdict.passed, approved=approved)
            override = False
            run.chunks.append(record)
            if self.settings.gate and not (record.passed or record.approved):
                self.holds["low_confidence"] += 1
                run.reason = verdict.reason
                return self._end(run, "low_confidence", verdict.reason, dict(verdict.score))
            previous, previous_start = samples, start_tick
            for action in chunk[first_row : h - r]:
                self._actuate(action, record, run)
                last = action
                if action[DONE_INDEX] > 0.5:
                    return self._done(run, step)
                if run.ticks >= self.settings.max_ticks:
                    break
            if not ahead:
                prefix, owner = chunk[h - r], record
        self.holds["stalled"] += 1
        return self._end(run, "stalled", f"step did not finish within {self.settings.max_ticks} ticks")

    def teleoperate(
        self, step_index: int, instruction: str, commands: TeleopChannel, stop: threading.Event
    ) -> StepReport:
        """The operator drives: here the scripted expert's moves, applied tick by tick (charged as operator time).
        At a checkpoint the operator puts the scene right (every block where the plan wants it by now); after a
        refusal or a stall it finishes the step."""
        target = self.scene_targets.pop(step_index, None)
        if target is not None:
            run = self.repair_scene(step_index, target)
        else:
            run = self.repair(step_index, parse_instruction(instruction), driver="operator")
        return StepReport("done" if not stop.is_set() else "stopped", self.world.render(), {}, run.reason, run.ticks)

    def hold(self, reason: str) -> None:
        """Holding moves nothing; the time an answer takes is charged by the operator, not ticked here."""

    def latest_frame(self) -> np.ndarray | None:
        return self.world.render()

    # -- tasks ------------------------------------------------------------------------------------------------
    def on_event(self, event: TaskEvent) -> None:
        """A step (re)started by the task runner is judged against the bins as they are now."""
        if event.kind == "step_started" and event.step_index is not None:
            self.bins_before[event.step_index] = self.world.block_bins()

    def repair(self, step_index: int, step: Step, driver: Literal["operator", "measurement_repair"]) -> StepRun:
        """Finish ``step`` from wherever the world is, as a careful person would: first put back any block the
        failed attempt knocked out of a bin, then move the named block. Judged like any other attempt."""
        before = self.bins_before.setdefault(step_index, self.world.block_bins())
        run = StepRun(step_index, driver, "done", None, "", 0)
        self.runs.append(run)
        now = self.world.block_bins()
        knocked = [Step(c, b) for c, b in before.items() if c != step.colour and b is not None and now[c] != b]
        for part in [*knocked, step]:
            self._drive_expert(part, run, operator=driver == "operator")
            self._place_by_hand_if_needed(part)
        judgement = explain_step(self.world, step, before)
        run.success, run.reason = judgement.success, judgement.reason
        self.outcomes[step_index] = (judgement.success, judgement.reason)
        self.resolved_by[step_index] = driver
        return run

    def repair_scene(self, step_index: int, target: dict[str, str]) -> StepRun:
        """Move every misplaced block into the bin the plan wants (the operator fixing what a checkpoint found)."""
        run = StepRun(step_index, "operator", "done", None, "", 0)
        self.runs.append(run)
        self._release_if_holding(run)
        for colour, wanted in target.items():
            if self.world.block_bins()[colour] != wanted:
                self._drive_expert(Step(colour, wanted), run, operator=True)
                self._place_by_hand_if_needed(Step(colour, wanted))
        misplaced = scene_mismatch(self.world, target)
        run.success, run.reason = not misplaced, "; ".join(misplaced)
        self.outcomes[step_index] = (run.success, run.reason)
        self.resolved_by[step_index] = "operator"
        return run

    def _place_by_hand_if_needed(self, step: Step) -> None:
        """When the gripper could not do it (a block pushed off the reachable table), a person puts the block in
        its bin: counted, and charged ``HAND_PLACEMENT_S`` of operator time."""
        if self.world.block_bins()[step.colour] == step.bin:
            return
        rect = BIN_RECTS[step.bin]
        centre = (0.5 * (rect.x0 + rect.x1), 0.5 * (rect.y0 + rect.y1))
        self.world.arrange({step.colour: centre}, gripper=tuple(self.world.gripper_position()))
        self.hand_placements += 1

    def _release_if_holding(self, run: StepRun) -> None:
        if self.world.held_block() is not None:
            here = self.world.gripper_position()
            self.world.step(np.array([here[0], here[1], 0.0, 0.0], dtype=np.float32))
            self._tick(run, operator=True)

    def _drive_expert(self, step: Step, run: StepRun, operator: bool) -> None:
        expert = ScriptedExpert(self._expert_rng)
        expert.reset(step)
        for _ in range(REPAIR_MAX_TICKS):
            self.world.step(expert.act(self.world))
            self._tick(run, operator=operator)
            if expert.finished:
                break

    # -- helpers ----------------------------------------------------------------------------------------------
    def _tick(self, run: StepRun, operator: bool = False) -> None:
        run.ticks += 1
        self.robot_ticks += 1
        if operator:
            self.operator_ticks += 1

    def _actuate(self, action: np.ndarray, record: ChunkRecord, run: StepRun) -> None:
        # Counted where actions reach the world, independently of the gate's decision above.
        if self.settings.gate and not (record.passed or record.approved):
            self.low_confidence_actuations += 1
        self.world.step(action)
        record.actuated += 1
        self._tick(run)

    def _done(self, run: StepRun, step: Step) -> StepReport:
        judgement = explain_step(self.world, step, self.bins_before[run.step])
        run.outcome, run.success, run.reason = "done", judgement.success, judgement.reason
        self.outcomes[run.step] = (judgement.success, judgement.reason)
        self.resolved_by[run.step] = "policy"
        return StepReport("done", self.world.render(), {}, "", run.ticks)

    def _end(self, run: StepRun, outcome: str, reason: str, confidence: dict[str, float] | None = None) -> StepReport:
        run.outcome, run.reason = outcome, reason
        return StepReport(outcome, self.world.render(), confidence or {}, reason, run.ticks)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- operator


class ScriptedOperator:
    """Answers as a careful person at the console would, and as ``hil.harness.SimulatedOperator`` does for
    refusals and stalls: take over the step. At a checkpoint it looks at the scene (the simulator's ground truth):
    every block the plan has placed by now in its bin and nothing held → approve; otherwise take over and put
    the scene right. (Judging the scene, not each step's own verdict: a failed step whose block a later step
    moved again needs no fixing, and re-doing it would undo the later step.) Each answer costs ``delay_s`` of
    operator time (simulated); take-overs also cost the ticks the expert drives."""

    def __init__(
        self, executor: SimTimeExecutor, plan: Sequence[dict[str, str]], delay_s: float, max_answers: int = 40
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


@dataclass(frozen=True)
class ChainSetup:
    index: int
    world_seed: int
    chain: tuple[Step, ...]
    noise_seed: tuple[int, ...]
    expert_seed: tuple[int, ...]


def chain_setup(seed: int, index: int, n_steps: int = N_STEPS) -> ChainSetup:
    """Chain ``index`` of ``seed``: the same layout and instructions as ``hil.rollout.evaluate`` draws."""
    rng = np.random.default_rng([seed, index])
    world_seed = int(rng.integers(2**31))
    chain = tuple(make_chain(rng, TabletopWorld(world_seed), n_steps))
    return ChainSetup(index, world_seed, chain, (seed, index, 1), (seed, index, 2))


def plan_bins(world: TabletopWorld, chain: Sequence[Step]) -> list[dict[str, str]]:
    """After each step, where the plan wants the blocks: those that have a bin by then (the others may be
    anywhere on the table)."""
    bins = {c: b for c, b in world.block_bins().items() if b is not None}
    plan = []
    for step in chain:
        bins[step.colour] = step.bin
        plan.append(dict(bins))
    return plan


def scene_mismatch(world: TabletopWorld, target: dict[str, str]) -> list[str]:
    """What is wrong with the scene against ``target`` (empty when it matches and nothing is held)."""
    now = world.block_bins()
    wrong = [f"the {c} block is in {now[c] or 'no'} bin, not the {b} bin" for c, b in target.items() if now[c] != b]
    held = world.held_block()
    return wrong + ([f"the {held} block is still held"] if held is not None else [])


@dataclass
class AutonomousChain:
    index: int
    steps: list[StepRun]  # the policy's attempt at each step, in order

    @property
    def success(self) -> bool:
        return all(bool(s.success) for s in self.steps)


def run_autonomous(
    setup: ChainSetup, policy: PolicyRunner, monitor: ConfidenceMonitor, settings: LoopSettings
) -> AutonomousChain:
    world = TabletopWorld(setup.world_seed)
    executor = SimTimeExecutor(world, policy, monitor, dataclasses.replace(settings, gate=False),
                               np.random.default_rng(setup.noise_seed), np.random.default_rng(setup.expert_seed))
    stop = threading.Event()
    attempts: list[StepRun] = []
    for i, step in enumerate(setup.chain):
        executor.bins_before[i] = world.block_bins()
        executor.run_step(i, step.instruction, stop)
        attempt = executor.runs[-1]
        if attempt.success is None:
            attempt.success = False
        attempts.append(attempt)
        if not attempt.success:
            executor.repair(i, step, driver="measurement_repair")
    return AutonomousChain(setup.index, attempts)


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
    settings: LoopSettings,
    state_dir: Path,
    operator_delay_s: float,
) -> GatedChain:
    world = TabletopWorld(setup.world_seed)
    plan = plan_bins(world, setup.chain)
    executor = SimTimeExecutor(world, policy, monitor, dataclasses.replace(settings, gate=True),
                               np.random.default_rng(setup.noise_seed), np.random.default_rng(setup.expert_seed))
    operator = ScriptedOperator(executor, plan, operator_delay_s)
    task_settings = TaskSettings(checkpoint_every=CHECKPOINT_EVERY, verify_at_checkpoint=True, state_dir=state_dir,
                                 step_timeout_s=settings.max_ticks / CONTROL_RATE_HZ)
    steps = tuple(s.instruction for s in setup.chain)
    spec = TaskSpec(task_id=f"bench-{setup.noise_seed[0]}-{setup.index}", steps=steps)
    runner = TaskRunner(spec, executor, AnsweredQueue(operator), CheckpointStore(state_dir), task_settings,
                        answer_timeout_s=1.0, events=executor.on_event)
    result = runner.run(threading.Event())
    final_ok = not scene_mismatch(world, plan[-1])
    chunks = [c for run in executor.runs for c in run.chunks]
    policy_runs = [r for r in executor.runs if r.driver == "policy"]
    return GatedChain(
        index=setup.index,
        status=result.status,
        success=result.status == "completed" and final_ok,
        final_state_ok=final_ok,
        touches=dict(operator.touches),
        decisions=dict(operator.actions),
        operator_seconds=operator.operator_seconds,
        robot_seconds=executor.robot_ticks / CONTROL_RATE_HZ + sum(operator.touches.values()) * operator_delay_s,
        low_confidence_actuations=executor.low_confidence_actuations,
        chunks_actuated=sum(1 for c in chunks if c.actuated > 0),
        chunks_flagged=sum(1 for c in chunks if not c.passed),
        policy_attempts=len(policy_runs),
        gate_misses=sum(1 for r in policy_runs if r.outcome == "done" and not r.success),
        hand_placements=executor.hand_placements,
        steps_by_policy=sum(1 for i, who in executor.resolved_by.items()
                            if who == "policy" and executor.outcomes.get(i, (False, ""))[0]),
        runs=executor.runs,
    )


# ------------------------------------------------------------------------------------------- monitor + policy


def base_monitor(bundle: Bundle) -> ConfidenceMonitor:
    """The daemon's own monitor (``service.build_monitor``): bounds, embedding statistics, spread dimensions."""
    from vla_edge.service import build_monitor

    monitor = build_monitor(bundle, Settings(confidence=ConfidenceSettings(enabled=True, thresholds_file=None)))
    assert monitor is not None
    return monitor


def calibrated_signals(include_jerk: bool) -> tuple[str, ...]:
    return (*CALIBRATED_SIGNALS, "jerk") if include_jerk else CALIBRATED_SIGNALS


def fixed_thresholds(include_jerk: bool = False) -> dict[str, float]:
    """The gate's signals that calibration does not fit (limits; jerk unless asked): their defaults."""
    fitted = calibrated_signals(include_jerk)
    return {s: DEFAULT_THRESHOLDS[s] for s in SIGNALS if s not in fitted}


def with_thresholds(monitor: ConfidenceMonitor, thresholds: dict[str, float]) -> ConfidenceMonitor:
    merged = dict(DEFAULT_THRESHOLDS)
    merged.update(thresholds)
    return dataclasses.replace(monitor, thresholds=merged)


def open_policy(bundle_dir: Path, precision: str, threads: int = 2) -> tuple[Bundle, PolicyRunner]:
    bundle = load_bundle(bundle_dir)
    return bundle, PolicyRunner(bundle, precision=precision, providers=["CPUExecutionProvider"],
                                intra_op_threads=threads, seed=0)


def step_scores(chains: Sequence[AutonomousChain], signals: Sequence[str] = SIGNALS) -> StepScores:
    rows = [(step.signal_max(), not step.success) for chain in chains for step in chain.steps]
    return StepScores.from_rows(rows, signals)


def collect_step_scores(
    policy: PolicyRunner, monitor: ConfidenceMonitor, n_chains: int, seed: int, settings: LoopSettings,
    progress: Any = None,
) -> tuple[list[AutonomousChain], StepScores]:
    """Held-out autonomous rollouts for calibration: per step, each signal's maximum and the judge's verdict."""
    chains = []
    for index in range(n_chains):
        chains.append(run_autonomous(chain_setup(seed, index), policy, monitor, settings))
        if progress is not None:
            progress()
    return chains, step_scores(chains)


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
    settings: LoopSettings, console: Any,
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
    _, scores = collect_step_scores(policy, monitor, args.calibration_chains, args.calibration_seed, settings)
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
    settings = LoopSettings(num_samples=args.samples)
    monitor = base_monitor(bundle)
    thresholds, threshold_info = resolve_thresholds(args, bundle, policy, monitor, settings, console)
    monitor = with_thresholds(monitor, thresholds)

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
