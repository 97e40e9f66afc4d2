"""The robot's own executor on the reference world in simulated time: what `vla-edge calibrate`, the chain and tier
benchmarks and the fast executor tests run.

Nothing of the control loop is re-implemented here. `SimulatedRobot` builds the daemon's `PolicyStepExecutor` (its
`ChunkScheduler`, confidence monitor, optional remote tier) on a `SimClock` and points its camera, state source and
action sink at `SimulatedArm`, a thin adapter over the pymunk world (``hil.world``):

* an action sent is applied at once for one control period (so the frame half a tick later shows it executed, as
  the scheduler's plan-ahead expects); a period in which nothing was sent is a hold period (``world.hold()``);
* the camera shows the world as it is now (a new frame whenever the world stepped), the state is the gripper's;
* inference is synchronous, its result available ``inference_delay_s`` simulated seconds later (default 0: at
  the next tick, as the robot's worker delivers a ~2 ms chunk planned half a tick ahead).

`SimulatedRobot` is also a `vla_edge.task.StepExecutor`: every policy attempt is judged by the simulator's judge
(``hil.tasks.explain_step``) when it ends, and the operator's hands (a take-over, a repair for measurement) are the
scripted expert, charged as operator time. Simulated time makes a hundred ten-step chains take about a minute.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vla_edge.bundle import Bundle, BundleManifest, load_bundle
from vla_edge.calibration import ChunkSteps, StepScores
from vla_edge.camera import CameraStatus
from vla_edge.clock import SimClock
from vla_edge.confidence import ConfidenceMonitor
from vla_edge.config import ConfidenceSettings, Settings
from vla_edge.executor import ExecutorSettings, PolicyStepExecutor, TickObserver
from vla_edge.operator.escalation import TeleopChannel
from vla_edge.policy import PolicyRunner
from vla_edge.scheduler import PlannedChunk, TickDecision
from vla_edge.task import StepReport, TaskEvent
from vla_edge.types import ChunkSamples, Frame

if TYPE_CHECKING:
    from hil.tasks import Step
    from hil.world import TabletopWorld
    from vla_edge.routing import TieredPlanner

N_STEPS = 10
REPAIR_MAX_TICKS = 150
HAND_PLACEMENT_S = 15.0  # operator time charged when the gripper cannot reach a block and a person places it


# ------------------------------------------------------------------------------------------- the arm


@dataclass(frozen=True)
class ArmState:
    """The simulated controller's state report (the fields the executor reads of `vla_edge.wire.StateReport`)."""

    actual: np.ndarray
    seq_applied: int
    t_sent_ns: int
    holding: bool
    hold_reason: str = ""
    seq_rejected: int | None = None


class SimulatedArm:
    """Camera, state source and action sink of the executor, over a `TabletopWorld` on a `SimClock`.

    It behaves as a position controller with its own control step once per period, just after the period starts
    (one nanosecond after the executor's tick on the same grid): the step applies the action received during the
    period before it, or holds when none came. So the frame the executor takes half a tick after sending an
    action shows that action executed, and the world advances one step per period whatever the executor does.
    A hold request does not undo an action already received for the period (it was under way)."""

    def __init__(self, world: TabletopWorld, clock: SimClock, rate_hz: float) -> None:
        self.world = world
        self.clock = clock
        self.period_ns = int(round(1e9 / rate_hz))
        self.status = CameraStatus.OK
        self.controller_alive = True  # False: no state reports reach the executor (a test's lost controller)
        self.actions = 0  # control steps that applied an action
        self.hold_periods = 0  # control steps with nothing to apply
        self.holds: Counter[str] = Counter()  # hold requests by reason
        self._pending: tuple[int, np.ndarray] | None = None
        self._commanded_in = -1  # the period in which the newest action arrived
        self._seq_sent = -1
        self._seq_applied = -1
        self._applied: dict[int, int] = {}  # every command a control step applied (a replaced one never was): when
        self._hold_reason = "starting"
        self._seq = 0
        self._frame_time = clock.now_ns()
        self._frame = Frame(world.render(), self._frame_time, self._seq)
        period = self._period(clock.now_ns())
        first = period * self.period_ns + 1
        self.clock.call_at(first if first >= clock.now_ns() else first + self.period_ns, self._control_step)

    # -- ActionSink --------------------------------------------------------------------------------------------
    def send_action(self, values: np.ndarray, t_due_ns: int) -> int:
        self._seq_sent += 1
        self._pending = (self._seq_sent, np.array(values, dtype=np.float32))
        self._commanded_in = self._period(self.clock.now_ns())
        return self._seq_sent

    def send_hold(self, reason: str) -> None:
        self.holds[reason.split(":")[0]] += 1
        self._hold_reason = reason

    # -- StateSource -------------------------------------------------------------------------------------------
    def fresh_state(self) -> ArmState | None:
        if not self.controller_alive:
            return None
        return ArmState(self.world.state(), self._seq_applied, self.clock.now_ns(), self._pending is None,
                        "" if self._pending is not None else self._hold_reason)

    def actuated(self, seqs: set[int]) -> bool:
        return not self._applied.keys().isdisjoint(seqs)

    def reported_at_ns(self, seq: int) -> int | None:
        return self._applied.get(seq)  # the simulated controller reports at once, over an instant link

    # -- Camera --------------------------------------------------------------------------------------------------
    def latest(self, max_age_ms: float | None = None) -> Frame | None:
        if not self.status.live:
            return None
        if self._frame.seq != self._seq:
            self._frame = Frame(self.world.render(), self._frame_time, self._seq)
        return self._frame

    # -- the controller ------------------------------------------------------------------------------------------
    def _period(self, t_ns: int) -> int:
        return t_ns // self.period_ns

    def _control_step(self) -> None:
        if self._pending is not None:
            self._seq_applied, action = self._pending
            self._applied[self._seq_applied] = self.clock.now_ns()
            self.world.step(action)
            self.actions += 1
        else:
            self.world.hold()  # nothing new: the controller holds, the world goes on
            self.hold_periods += 1
        self._pending = None
        self._seq += 1
        self._frame_time = self.clock.now_ns()
        self.clock.call_at(self._frame_time + self.period_ns, self._control_step)

    def hand_action(self, action: np.ndarray) -> None:
        """A person's (the operator's, the expert's) command for one period: in the next period that has no
        command yet, applied by its control step, and the hand waits until that period ends."""
        now = self._period(self.clock.now_ns())
        if self._commanded_in == now:
            self.clock.sleep_until_ns((now + 1) * self.period_ns)
        self.send_action(action, self.clock.now_ns())
        self.clock.sleep_until_ns((self._period(self.clock.now_ns()) + 1) * self.period_ns)


class SeededPolicy:
    """The ONNX policy with its sampling noise drawn from a given generator, so two runs of the same chain (say
    autonomous and gated) see the same noise chunk for chunk."""

    def __init__(self, runner: PolicyRunner, rng: np.random.Generator) -> None:
        self.runner = runner
        self.rng = rng

    @property
    def horizon(self) -> int:
        return self.runner.horizon

    @property
    def action_dim(self) -> int:
        return self.runner.action_dim

    def infer(self, image: np.ndarray, state: np.ndarray, instruction: str, num_samples: int = 8,
              prefix: np.ndarray | None = None, t_obs_ns: int | None = None,
              guide: np.ndarray | None = None) -> ChunkSamples:
        if instruction != self.runner.instruction:
            self.runner.set_instruction(instruction)
        noise = self.rng.standard_normal((num_samples, self.horizon, self.action_dim), dtype=np.float32)
        return self.runner.sample(self.runner.encode(image, state, t_obs_ns), num_samples, prefix, noise=noise,
                                  guide=guide)


# ------------------------------------------------------------------------------------------- records


@dataclass
class ChunkRecord:
    """One planned chunk: its signal values, its verdict, and how many of its actions reached the world."""

    step: int
    values: dict[str, float]
    passed: bool
    approved: bool = False  # the operator approved it despite its verdict
    attempt: int = 0  # 0, or n for the n-th re-sample after a refusal
    actuated: int = 0
    latency_ms: float = 0.0  # wall time of planning it on this machine
    tier: str = "local"


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
        """Each signal's largest value over the chunks judged in the normal course (re-samples excluded: they are
        what recovery does after a first refusal, which the first chunk's values already show)."""
        chunks = [c for c in self.chunks if c.attempt == 0] or self.chunks
        if not chunks:
            return {}
        return {name: max(c.values.get(name, 0.0) for c in chunks) for name in chunks[0].values}

    def flagged(self) -> bool:
        return any(not c.passed for c in self.chunks)

    @property
    def resamples(self) -> int:
        return sum(1 for c in self.chunks if c.attempt > 0)


class RunRecorder(TickObserver):
    """The executor's observer in simulation: a `ChunkRecord` per planned chunk, the actions each put in the
    world, and actions from refused chunks (counted where they reach the arm, independently of the gate)."""

    def __init__(self, gate: bool) -> None:
        self.gate = gate
        self.run: StepRun | None = None
        self.low_confidence_actuations = 0
        self._records: dict[int, tuple[PlannedChunk, ChunkRecord]] = {}

    def on_chunk(self, planned: PlannedChunk) -> None:
        if self.run is None:
            return
        record = ChunkRecord(self.run.step, dict(planned.verdict.score), planned.verdict.passed,
                             approved=planned.waiver is not None and self.gate, attempt=planned.request.attempt,
                             latency_ms=planned.latency_ms, tier=planned.tier)
        self.run.chunks.append(record)
        self._records[id(planned)] = (planned, record)

    def on_tick(self, decision: TickDecision, lateness_ns: int, sent: np.ndarray | None, frame: Frame | None,
                state: np.ndarray | None, instruction: str, intervention: bool) -> None:
        if sent is None or decision.chunk is None:
            return
        entry = self._records.get(id(decision.chunk))
        if entry is None:
            return
        record = entry[1]
        record.actuated += 1
        if self.gate and not (record.passed or record.approved):
            self.low_confidence_actuations += 1

    def on_step_end(self, report: StepReport, instruction: str) -> None:
        self._records.clear()


# ------------------------------------------------------------------------------------------- the robot


class SimulatedRobot:
    """The daemon's executor, the policy and the simulated arm of one chain; a `vla_edge.task.StepExecutor`.

    ``gate=False`` runs the executor in shadow mode (every verdict computed and recorded, every chunk actuated):
    the autonomous runs that calibration and the benchmark's AUROCs use."""

    def __init__(
        self,
        world: TabletopWorld,
        runner: PolicyRunner,
        monitor: ConfidenceMonitor | None,
        settings: ExecutorSettings,
        noise_rng: np.random.Generator,
        expert_rng: np.random.Generator,
        router: TieredPlanner | None = None,
        observers: Sequence[TickObserver] = (),
    ) -> None:
        self.world = world
        self.clock = SimClock()
        self.arm = SimulatedArm(world, self.clock, settings.control_rate_hz)
        self.recorder = RunRecorder(settings.gate)
        self.executor = PolicyStepExecutor(
            SeededPolicy(runner, noise_rng), monitor, self.arm, self.arm, settings,
            observers=[self.recorder, *observers], router=router, state=self.arm, clock=self.clock,
        )
        self._expert_rng = expert_rng
        self.runs: list[StepRun] = []
        self.outcomes: dict[int, tuple[bool, str]] = {}
        self.resolved_by: dict[int, str] = {}  # who finished each step last: "policy" or "operator"
        self.bins_before: dict[int, dict[str, str | None]] = {}
        self.operator_ticks = 0
        self.hand_placements = 0  # blocks the expert could not move (e.g. pushed off the table), placed by hand
        # Set by the operator before a verification take-over: the bins the chain's plan wants at the checkpoint.
        self.scene_targets: dict[int, dict[str, str]] = {}

    def close(self) -> None:
        self.executor.close()

    @property
    def low_confidence_actuations(self) -> int:
        return self.recorder.low_confidence_actuations

    @property
    def seconds(self) -> float:
        """Simulated time so far: the robot's time, including holds and the operator's answers and take-overs."""
        return self.clock.now_ns() / 1e9

    # -- StepExecutor ------------------------------------------------------------------------------------------
    def run_step(
        self, step_index: int, instruction: str, stop: threading.Event, *, override_once: bool = False
    ) -> StepReport:
        from hil.tasks import explain_step, parse_instruction

        step = parse_instruction(instruction)
        self.bins_before.setdefault(step_index, self.world.block_bins())
        run = StepRun(step_index, "policy", "stalled", None, "", 0)
        self.runs.append(run)
        self.recorder.run = run
        report = self.executor.run_step(step_index, instruction, stop, override_once=override_once)
        self.recorder.run = None
        run.outcome, run.reason, run.ticks = report.outcome, report.reason, report.ticks
        if report.outcome == "done":
            judgement = explain_step(self.world, step, self.bins_before[step_index])
            run.success, run.reason = judgement.success, judgement.reason
            self.outcomes[step_index] = (judgement.success, judgement.reason)
            self.resolved_by[step_index] = "policy"
        return report

    def teleoperate(
        self, step_index: int, instruction: str, commands: TeleopChannel, stop: threading.Event
    ) -> StepReport:
        """The operator drives: here the scripted expert's moves, one per control period (operator time). At a
        checkpoint the operator puts the scene right (every block where the plan wants it by now); after a
        refusal or a stall it finishes the step."""
        from hil.tasks import parse_instruction

        target = self.scene_targets.pop(step_index, None)
        if target is not None:
            run = self.repair_scene(step_index, target)
        else:
            run = self.repair(step_index, parse_instruction(instruction), driver="operator")
        return StepReport("done" if not stop.is_set() else "stopped", self.world.render(), {}, run.reason, run.ticks)

    def hold(self, reason: str) -> None:
        self.executor.hold(reason)

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
        from hil.tasks import Step as StepType
        from hil.tasks import explain_step

        before = self.bins_before.setdefault(step_index, self.world.block_bins())
        run = StepRun(step_index, driver, "done", None, "", 0)
        self.runs.append(run)
        now = self.world.block_bins()
        knocked = [StepType(c, b) for c, b in before.items() if c != step.colour and b is not None and now[c] != b]
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
        from hil.tasks import Step as StepType

        run = StepRun(step_index, "operator", "done", None, "", 0)
        self.runs.append(run)
        self._release_if_holding(run)
        for colour, wanted in target.items():
            if self.world.block_bins()[colour] != wanted:
                self._drive_expert(StepType(colour, wanted), run, operator=True)
                self._place_by_hand_if_needed(StepType(colour, wanted))
        misplaced = scene_mismatch(self.world, target)
        run.success, run.reason = not misplaced, "; ".join(misplaced)
        self.outcomes[step_index] = (run.success, run.reason)
        self.resolved_by[step_index] = "operator"
        return run

    def _place_by_hand_if_needed(self, step: Step) -> None:
        """When the gripper could not do it (a block pushed off the reachable table), a person puts the block in
        its bin: counted, and charged ``HAND_PLACEMENT_S`` of operator time."""
        from hil.world import BIN_RECTS

        if self.world.block_bins()[step.colour] == step.bin:
            return
        rect = BIN_RECTS[step.bin]
        centre = (0.5 * (rect.x0 + rect.x1), 0.5 * (rect.y0 + rect.y1))
        self.world.arrange({step.colour: centre}, gripper=tuple(self.world.gripper_position()))
        self.hand_placements += 1

    def _release_if_holding(self, run: StepRun) -> None:
        if self.world.held_block() is not None:
            here = self.world.gripper_position()
            self._hand_tick(np.array([here[0], here[1], 0.0, 0.0], dtype=np.float32), run, operator=True)

    def _drive_expert(self, step: Step, run: StepRun, operator: bool) -> None:
        from hil.expert import ScriptedExpert

        expert = ScriptedExpert(self._expert_rng)
        expert.reset(step)
        for _ in range(REPAIR_MAX_TICKS):
            self._hand_tick(expert.act(self.world), run, operator)
            if expert.finished:
                break

    def _hand_tick(self, action: np.ndarray, run: StepRun, operator: bool) -> None:
        self.arm.hand_action(action)
        run.ticks += 1
        if operator:
            self.operator_ticks += 1


def scene_mismatch(world: TabletopWorld, target: dict[str, str]) -> list[str]:
    """What is wrong with the scene against ``target`` (empty when it matches and nothing is held)."""
    now = world.block_bins()
    wrong = [f"the {c} block is in {now[c] or 'no'} bin, not the {b} bin" for c, b in target.items() if now[c] != b]
    held = world.held_block()
    return wrong + ([f"the {held} block is still held"] if held is not None else [])


# ------------------------------------------------------------------------------------------- chains


@dataclass(frozen=True)
class ChainSetup:
    index: int
    world_seed: int
    chain: tuple[Step, ...]
    noise_seed: tuple[int, ...]
    expert_seed: tuple[int, ...]


def chain_setup(seed: int, index: int, n_steps: int = N_STEPS) -> ChainSetup:
    """Chain ``index`` of seed root ``seed``: the same layout and instructions as ``hil.rollout.evaluate`` draws
    (docs/evaluation-seeds.md says which roots are spent on what)."""
    from hil.tasks import make_chain
    from hil.world import TabletopWorld

    rng = np.random.default_rng([seed, index])
    world_seed = int(rng.integers(2**31))
    chain = tuple(make_chain(rng, TabletopWorld(world_seed), n_steps))
    return ChainSetup(index, world_seed, chain, (seed, index, 1), (seed, index, 2))


def robot_for(setup: ChainSetup, runner: PolicyRunner, monitor: ConfidenceMonitor | None,
              settings: ExecutorSettings, router: TieredPlanner | None = None,
              observers: Sequence[TickObserver] = ()) -> SimulatedRobot:
    from hil.world import TabletopWorld

    return SimulatedRobot(TabletopWorld(setup.world_seed), runner, monitor, settings,
                          np.random.default_rng(setup.noise_seed), np.random.default_rng(setup.expert_seed), router,
                          observers)


@dataclass
class AutonomousChain:
    index: int
    steps: list[StepRun]  # the policy's attempt at each step, in order
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        return all(bool(s.success) for s in self.steps)


def run_autonomous(setup: ChainSetup, runner: PolicyRunner, monitor: ConfidenceMonitor | None,
                   settings: ExecutorSettings, router: TieredPlanner | None = None,
                   observers: Sequence[TickObserver] = ()) -> AutonomousChain:
    """The policy alone on every step, every chunk actuated whatever its verdict (the verdicts are recorded). A
    failed step is finished by the scripted expert only so the next step starts where the chain expects.
    ``observers`` see every tick of the policy's steps (a benchmark's own figures)."""
    from dataclasses import replace

    robot = robot_for(setup, runner, monitor, replace(settings, gate=False, resample_tries=0), router, observers)
    stop = threading.Event()
    attempts: list[StepRun] = []
    try:
        for i, step in enumerate(setup.chain):
            robot.bins_before[i] = robot.world.block_bins()
            robot.run_step(i, step.instruction, stop)
            attempt = robot.runs[-1]
            if attempt.success is None:
                attempt.success = False
            attempts.append(attempt)
            if not attempt.success:
                robot.repair(i, step, driver="measurement_repair")
    finally:
        robot.close()
    return AutonomousChain(setup.index, attempts, robot.seconds)


# ------------------------------------------------------------------------------------------- opening


def simulation_settings(manifest: BundleManifest, settings: Settings | None = None, **overrides: Any) -> ExecutorSettings:
    """The executor's settings for the simulated world: the daemon's (from ``settings``, the defaults unless
    given) with inference synchronous on the simulated clock; ``overrides`` replace single fields."""
    overrides.setdefault("simulated_inference_delay_s", 0.0)
    return ExecutorSettings.from_settings(settings or Settings(), manifest, **overrides)


def open_policy(bundle_dir: Path, precision: str, threads: int = 2) -> tuple[Bundle, PolicyRunner]:
    bundle = load_bundle(bundle_dir)
    return bundle, PolicyRunner(bundle, precision=precision, providers=["CPUExecutionProvider"],
                                intra_op_threads=threads, seed=0)


def base_monitor(bundle: Bundle) -> ConfidenceMonitor:
    """The daemon's own monitor (``service.build_monitor``): bounds, embedding statistics, spread dimensions,
    thresholds from the bundle (defaults where it has none)."""
    from vla_edge.service import build_monitor

    monitor = build_monitor(bundle, Settings(confidence=ConfidenceSettings(enabled=True, thresholds_file=None)))
    assert monitor is not None
    return monitor


def collect_autonomous(runner: PolicyRunner, monitor: ConfidenceMonitor, n_chains: int, seed: int,
                       settings: ExecutorSettings, progress: Callable[[], None] | None = None) -> list[AutonomousChain]:
    """Autonomous rollouts of chains ``0..n_chains-1`` of seed root ``seed`` (calibration's held-out data)."""
    chains = []
    for index in range(n_chains):
        chains.append(run_autonomous(chain_setup(seed, index), runner, monitor, settings))
        if progress is not None:
            progress()
    return chains


def step_scores(chains: Sequence[AutonomousChain], signals: Sequence[str] | None = None) -> StepScores:
    """Per autonomous step: each signal's maximum over its chunks and whether the judge failed it."""
    from vla_edge.confidence import SIGNALS

    rows = [(step.signal_max(), not step.success) for chain in chains for step in chain.steps]
    return StepScores.from_rows(rows, signals or SIGNALS)


def chunk_steps(chains: Sequence[AutonomousChain]) -> ChunkSteps:
    """Per autonomous step: every chunk's signal values (what a per-chunk gate sees) and whether it failed."""
    chunks = [[c.values for c in step.chunks] for chain in chains for step in chain.steps]
    return ChunkSteps(chunks, np.array([not step.success for chain in chains for step in chain.steps], dtype=bool))
