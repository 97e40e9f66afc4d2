"""The policy step executor: one step of a task, tick by tick, from camera frames to commands on the wire.

Each control tick (fixed rate, on the executor's `Clock`) it

1. takes the newest camera frame (never one older than ``camera.max_frame_age_ms``),
2. asks the `ChunkScheduler` what the motors do now; the scheduler plans chunks with the policy and the
   confidence monitor (in a worker thread on the robot; synchronously, with a simulated delay, on a `SimClock`),
3. sends that action to the `ActionSink` with its due time, or a hold when there is nothing valid to send,
4. records the tick (dataset, telemetry, console) and tells the watchdog the loop made progress,
5. half a tick later, takes the frame that shows the action executed and lets the scheduler request the next
   chunk from it (``scheduler.plan_ahead``), so that chunk's first action is the one that runs next.

A step ends by the bundle's ``step_end`` rule (`vla_edge.step_end`): an action whose ``done`` dimension (named in
the manifest) is set was *actuated* (the controller's state report acknowledges it; sent is not enough), or the
step ran its ``max_chunks`` / ``max_seconds``, or the success detector fired; when a chunk fails its confidence verdict and the re-samples allowed by ``recovery`` did not
replace it (the arm holds and the task runner escalates); when the step runs past ``task.step_timeout_s``
(stalled); or when asked to stop.

The controller's state is trusted only while it is fresh (`ActionStream.fresh_state`): while the controller is
dead or stale the arm is asked to hold, nothing planned earlier runs, no chunk is planned and no step completes.
A command the controller refused (late, over-velocity, ...: the arm is not where the plan assumed) drops the rest
of its chunk, and the next chunk is planned from the measured position; a take-over re-bases the operator's target
on the measured position the same way (docs/wire.md §6).

It depends only on small interfaces (`ChunkPolicy`, `Camera`, `ActionSink`, `StateSource`, `Clock`): the daemon
passes the ONNX policy, the camera, the ZeroMQ stream and the monotonic clock; the benchmarks and ``vla-edge
calibrate`` pass the same policy and the simulated arm of the reference world on a simulated clock
(`vla_edge.simulation`). One loop, measured where it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vla_edge.camera import CameraStatus
from vla_edge.clock import Clock, MonotonicClock
from vla_edge.confidence import ChunkContext, ConfidenceMonitor, select_chunk
from vla_edge.operator.escalation import TeleopChannel
from vla_edge.routing import TieredPlanner
from vla_edge.scheduler import (
    ChunkScheduler,
    DelayEstimator,
    InferenceRequest,
    PlannedChunk,
    RateLoop,
    Recovery,
    SimulatedInference,
    ThreadedInference,
    TickDecision,
    realtime_tick,
)
from vla_edge.step_end import ActionLayout, StepEndTracker
from vla_edge.task import StepReport
from vla_edge.types import ChunkSamples, Frame, Observation, Verdict

log = logging.getLogger(__name__)

DONE_INDEX = 3  # the action's "step finished" flag (the reference action space: x, y, grip, done)
GRIP_INDEX = 2
# A controller speaking wire version 1 has no seq_rejected; its hold reason then says why a command was refused.
_REFUSAL_REASONS = frozenset({"late", "stale", "wrong_dim", "non_finite", "out_of_limits", "over_velocity"})
_DEAF_REASONS = frozenset({"stale", "handshake"})  # the controller holds because nothing of ours reaches it
_FEEDBACK_POLL_NS = 1_000_000  # how often plan-ahead looks for the controller's report and the frame after it


def step_done(action: np.ndarray) -> bool:
    """Whether an executed action ends the step (the one place that reads the ``done`` dimension)."""
    return bool(action[DONE_INDEX] > 0.5)


# -- what the executor needs from the world ---------------------------------------------------------------------


class ChunkPolicy(Protocol):
    """K sampled action chunks for one observation (`vla_edge.policy.PolicyRunner`)."""

    @property
    def horizon(self) -> int: ...

    @property
    def action_dim(self) -> int: ...

    def infer(self, image: np.ndarray, state: np.ndarray, instruction: str, num_samples: int = 8,
              prefix: np.ndarray | None = None, t_obs_ns: int | None = None,
              guide: np.ndarray | None = None) -> ChunkSamples:
        """``prefix``: actions the chunk must start with; ``guide``: the executing chunk's actions after them, a
        soft target (real-time chunking, ``scheduler.boundary = "rtc"``; only passed when there is one)."""
        ...


class Camera(Protocol):
    """The newest frame and whether frames may be acted on (`vla_edge.camera.FrameSource`)."""

    def latest(self, max_age_ms: float | None = None) -> Frame | None: ...

    @property
    def status(self) -> CameraStatus: ...


class ActionSink(Protocol):
    """Where commands go (`vla_edge.stream.ActionStream`; the simulated arm in benchmarks)."""

    def send_action(self, values: np.ndarray, t_due_ns: int) -> int:
        """Send one command; its sequence number, or -1 when nothing was sent (no controller ready)."""
        ...

    def send_hold(self, reason: str) -> None: ...


class ControllerState(Protocol):
    """What the executor reads of a controller's state report (`vla_edge.wire.StateReport`)."""

    @property
    def actual(self) -> Sequence[float]: ...

    @property
    def seq_applied(self) -> int: ...

    @property
    def seq_rejected(self) -> int | None: ...

    @property
    def holding(self) -> bool: ...

    @property
    def hold_reason(self) -> str: ...

    @property
    def t_sent_ns(self) -> int: ...


class StateSource(Protocol):
    """The robot's measured state and what it actuated (`vla_edge.stream.ActionStream`)."""

    def fresh_state(self) -> ControllerState | None:
        """The newest state report while the controller is alive and reporting; None while it is dead or stale."""
        ...

    def actuated(self, seqs: set[int]) -> bool:
        """Whether the controller has reported actuating any of the commands ``seqs``."""
        ...


class TickObserver:
    """Receives what happens at each tick (telemetry, console, recorder). Every method is optional to act on."""

    def on_tick(self, decision: TickDecision, lateness_ns: int, sent: np.ndarray | None, frame: Frame | None,
                state: np.ndarray | None, instruction: str, intervention: bool) -> None: ...

    def on_chunk(self, planned: PlannedChunk) -> None: ...

    def on_step_end(self, report: StepReport, instruction: str) -> None: ...

    def on_plan_ahead(self, wait: PlanAheadWait) -> None: ...


@dataclass(frozen=True)
class PlanAheadWait:
    """What one plan-ahead waited for before it let the scheduler plan from the frame it then held (executor clock).

    ``feedback``: ``reported``, the controller's report that command ``seq`` actuated came and a frame taken after
    it (captured at ``taken_after_ns`` or later: the report's arrival minus half the link's round trip and 5 ms) is
    the one planned from; ``no_report`` / ``no_frame``: the time to plan before the next tick (``budget_end_ns``)
    ran out first, and the plan-ahead went on from what there was (as over an instant link)."""

    seq: int
    feedback: str
    budget_end_ns: int
    planned_ns: int  # when the wait ended and the scheduler was let plan
    round_trip_ns: int  # the link's round trip the margin was derived from (0: not measured)
    taken_after_ns: int | None  # None unless the report came
    frame_capture_ns: int | None  # the frame planned from (None: no frame)


@dataclass
class ExecutorSettings:
    num_samples: int
    control_rate_hz: float
    replan_when_remaining: int
    boundary: str
    blend_steps: int
    max_frame_age_ms: float
    step_timeout_s: float
    state_dim: int
    plan_ahead: bool = True  # request the next chunk half a tick after an action is sent (scheduler.plan_ahead)
    request_by_delay: bool = True  # scheduler.request_by_delay: ask early enough for the measured inference delay
    delay_quantile: float = 0.9  # scheduler.delay_quantile
    delay_window: int = 20  # scheduler.delay_window
    realtime_priority: int | None = None  # SCHED_FIFO for the tick thread while a step runs (scheduler.realtime_tick)
    gil_switch_interval_ms: float = 0.5
    resample_tries: int = 0  # recovery.resample_tries (config default 2): re-samples of a refused chunk
    resample_deadline_s: float = 1.0  # recovery.resample_deadline_s
    resample_num_samples: int | None = None  # recovery.resample_num_samples: K for a re-sample (None: num_samples)
    gate: bool = True  # False: verdicts are computed and reported, every chunk runs (shadow mode, calibration)
    # Simulated time only: inference runs synchronously and its result arrives this many simulated seconds later
    # (None: a worker thread in real time, the robot's mode).
    simulated_inference_delay_s: float | None = None
    # The bundle's action names and step-end rule (vla_edge.step_end); None: the reference's [x, y, grip, done].
    layout: ActionLayout | None = None

    @classmethod
    def from_settings(cls, settings, manifest, **overrides) -> ExecutorSettings:
        """The executor's settings from the daemon's one config object (`vla_edge.config.Settings`) and the bundle
        manifest; ``overrides`` set fields that are not configuration (``gate``, the simulated delay)."""
        s = settings
        values = dict(
            num_samples=s.policy.num_samples,
            control_rate_hz=s.scheduler.control_rate_hz or manifest.control_rate_hz,
            replan_when_remaining=min(s.scheduler.replan_when_remaining, manifest.horizon - 1),
            boundary=s.scheduler.boundary,
            blend_steps=s.scheduler.blend_steps,
            plan_ahead=s.scheduler.plan_ahead,
            request_by_delay=s.scheduler.request_by_delay,
            delay_quantile=s.scheduler.delay_quantile,
            delay_window=s.scheduler.delay_window,
            max_frame_age_ms=s.camera.max_frame_age_ms,
            step_timeout_s=s.task.step_timeout_s,
            state_dim=manifest.state_dim,
            realtime_priority=s.scheduler.realtime_priority,
            gil_switch_interval_ms=s.scheduler.gil_switch_interval_ms,
            resample_tries=s.recovery.resample_tries,
            resample_deadline_s=s.recovery.resample_deadline_s,
            resample_num_samples=s.recovery.resample_num_samples,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class _ChunkMemory:
    """The last accepted chunk, for the temporal-consistency signal (written by the tick, read by the planner)."""

    samples: ChunkSamples | None = None
    start_tick: int = 0
    last_executed: np.ndarray | None = None
    override_next: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class PolicyStepExecutor:
    """Implements `vla_edge.task.StepExecutor` on a policy, a camera, an action sink and a clock."""

    def __init__(
        self,
        policy: ChunkPolicy,
        monitor: ConfidenceMonitor | None,
        camera: Camera,
        sink: ActionSink,
        settings: ExecutorSettings,
        observers: list[TickObserver] | None = None,
        progress: Callable[[], None] | None = None,
        router: TieredPlanner | None = None,
        *,
        state: StateSource | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.policy = policy
        self.monitor = monitor
        self.router = router  # asks the remote tier when the local verdict fails (vla_edge.routing)
        self.camera = camera
        self.sink = sink
        self.state_source: StateSource = state if state is not None else sink  # type: ignore[assignment]
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.settings = settings
        self.observers = observers or []
        self._progress = progress or (lambda: None)
        self._frame: Frame | None = None
        self._last_planned_seq = -1
        self._instruction = ""
        self._memory = _ChunkMemory()
        self._holding_reason: str | None = None
        self._refusal_seen = -1  # newest seq_rejected (or refusing report) already acted on
        # Plan-ahead waits by feedback (PlanAheadWait.feedback); also vla_edge_plan_ahead_total.
        self.plan_ahead_feedback: Counter[str] = Counter()
        space = getattr(getattr(policy, "manifest", None), "action_space", None)
        self._action_low = None if space is None else np.asarray(space.low, np.float32)
        self._action_high = None if space is None else np.asarray(space.high, np.float32)
        if settings.simulated_inference_delay_s is None:
            inference = ThreadedInference(self._plan)
        else:
            inference = SimulatedInference(self._plan, self.clock, settings.simulated_inference_delay_s)
        # One tick grid for the executor's life: consecutive steps never put two ticks in one period.
        self._loop = RateLoop(settings.control_rate_hz, self.clock)
        period_s = 1.0 / settings.control_rate_hz
        self._scheduler = ChunkScheduler(
            self._plan,
            self._observe,
            horizon=policy.horizon,
            action_dim=policy.action_dim,
            replan_when_remaining=settings.replan_when_remaining,
            boundary=settings.boundary,  # type: ignore[arg-type]
            blend_steps=settings.blend_steps,
            plan_ahead=settings.plan_ahead,
            request_by_delay=settings.request_by_delay,
            # The inference delay is measured, not assumed: the first chunk's arrival gives the first estimate.
            delay=DelayEstimator(settings.delay_quantile, settings.delay_window),
            recovery=Recovery(settings.resample_tries if settings.gate else 0,
                              int(round(settings.resample_deadline_s / period_s))),
            inference=inference,
        )

    def close(self) -> None:
        self._scheduler.close()

    @property
    def scheduler(self) -> ChunkScheduler:
        return self._scheduler

    # -- StepExecutor --------------------------------------------------------------------------------------------
    def run_step(
        self, step_index: int, instruction: str, stop: threading.Event, *, override_once: bool = False
    ) -> StepReport:
        with realtime_tick(self.settings.realtime_priority, self.settings.gil_switch_interval_ms):
            return self._run_step_ticks(instruction, stop, override_once)

    def _run_step_ticks(self, instruction: str, stop: threading.Event, override_once: bool) -> StepReport:
        self._begin(instruction)
        with self._memory.lock:
            self._memory.override_next = override_once
        loop = self._loop
        loop.resume()
        started = loop.next_tick_ns
        timeout_ns = int(self.settings.step_timeout_s * 1e9)
        ticks = 0
        done_seqs: set[int] = set()  # commands sent with the done flag; the step ends when one was actuated
        layout = self.settings.layout
        ending = StepEndTracker(layout, started) if layout is not None else None
        while True:
            if stop.is_set():
                return self._end(StepReport("stopped", self.latest_frame(), {}, "stop requested", ticks), "stopped")
            lateness = loop.wait()
            if done_seqs and self.state_source.actuated(done_seqs):
                # Acknowledged since the last tick: the step is over before anything more is sent.
                return self._end(StepReport("done", self.latest_frame(), {}, "", ticks), None)
            self._pull_frame()
            camera_status = self.camera.status
            controller = self._live_controller()
            if not camera_status.live:
                # Blind: nothing committed earlier may run either. The step stalls unless the camera recovers.
                self._scheduler.reset()
                decision = TickDecision(tick=loop.tick, action=None, hold_reason=f"camera_{camera_status.value}")
            elif controller is None:
                # The controller is dead or its state stale: nothing planned from its old state may run, nothing
                # is planned, the step cannot complete. It stalls unless the controller comes back.
                self._scheduler.reset()
                decision = TickDecision(tick=loop.tick, action=None, hold_reason="controller_lost")
            elif self._new_refusal(controller):
                # The controller refused a command: the arm is not where the rest of that chunk assumes.
                self._scheduler.reset()
                decision = TickDecision(tick=loop.tick, action=None, hold_reason="replan_after_refusal")
            else:
                decision = self._scheduler.tick(loop.tick)
            ticks += 1
            if decision.new_chunk is not None:
                self._accept(decision.new_chunk)
                if ending is not None:
                    ending.on_chunk(decision.new_chunk.samples.success)
            if decision.rejected_chunk is not None:
                self._notify_chunk(decision.rejected_chunk)
            if decision.escalate:
                verdict = decision.rejected_chunk.verdict  # type: ignore[union-attr]
                self._send_hold("low_confidence")
                report = StepReport("low_confidence", self.latest_frame(), _figures(verdict), verdict.reason, ticks)
                self._after_tick(decision, lateness, None, instruction, intervention=False)
                return self._end(report, "low_confidence")
            sent, seq = self._send(decision)
            self._after_tick(decision, lateness, sent, instruction, intervention=False)
            if sent is not None and seq >= 0 and (layout.is_done(sent) if layout else step_done(sent)):
                done_seqs.add(seq)
            if done_seqs and self.state_source.actuated(done_seqs):
                return self._end(StepReport("done", self.latest_frame(), {}, "", ticks), None)
            if ending is not None:  # the bundle's other step-end rules: chunks, seconds, success detector
                if sent is not None:
                    ending.on_action(sent)
                why_done = ending.check(loop.next_tick_ns)
                if why_done is not None:
                    return self._end(StepReport("done", self.latest_frame(), {}, why_done, ticks), None)
            if loop.next_tick_ns - started >= timeout_ns:  # the step has used its time
                if layout is not None and layout.external:  # the step's time is up; the outside check judges it
                    return self._end(StepReport("done", self.latest_frame(), {}, "time budget used; the task "
                                                "runner's success check judges the step", ticks), None)
                self._send_hold("stalled")
                why = f"step did not finish within {self.settings.step_timeout_s:g} s"
                if decision.hold_reason:
                    why += f" (last hold: {decision.hold_reason})"
                return self._end(StepReport("stalled", self.latest_frame(), {}, why, ticks), "stalled")
            if sent is not None and self.settings.plan_ahead:
                # Plan the next chunk from the frame that shows the action just sent: half a tick on at the
                # earliest and, over a link with delay, once the controller reports it actuated.
                loop.wait_phase(0.5)
                self._pull_frame()
                if seq >= 0:
                    wait = self._await_feedback(seq, loop)
                    self.plan_ahead_feedback[wait.feedback] += 1
                    for observer in self.observers:
                        on_plan_ahead = getattr(observer, "on_plan_ahead", None)  # optional for an observer
                        if on_plan_ahead is not None:
                            on_plan_ahead(wait)
                if self.camera.status.live:
                    self._scheduler.plan_ahead(loop.tick + 1)

    def teleoperate(
        self, step_index: int, instruction: str, commands: TeleopChannel, stop: threading.Event
    ) -> StepReport:
        with realtime_tick(self.settings.realtime_priority, self.settings.gil_switch_interval_ms):
            return self._teleoperate_ticks(instruction, commands, stop)

    def _teleoperate_ticks(self, instruction: str, commands: TeleopChannel, stop: threading.Event) -> StepReport:
        """The operator's moves are relative: each one moves a target that starts at, and after any hold is put
        back to, the measured position, so moves made while the arm could not follow (a network gap, refused
        commands) are never replayed as a jump. No actuation for ``step_timeout_s``: the take-over stalls."""
        self._begin(instruction)
        loop = self._loop
        loop.resume()
        timeout_ns = int(self.settings.step_timeout_s * 1e9)
        position: np.ndarray | None = None  # the operator's target; None: re-base on the next measured state
        grip = 0.0
        base = np.zeros(self.policy.action_dim, np.float32)  # the bundle's action space: where the take-over started
        ticks = 0
        done_seqs: set[int] = set()
        last_applied, progress_ns = -1, self.clock.now_ns()
        while not stop.is_set():
            lateness = loop.wait()
            self._pull_frame()
            now = self.clock.now_ns()
            controller = self._live_controller()
            if controller is not None and controller.seq_applied > last_applied:
                last_applied, progress_ns = controller.seq_applied, now
            if controller is None or self._new_refusal(controller):
                position = None
            if position is None and controller is not None:
                measured = np.asarray(controller.actual, dtype=np.float64)
                position = np.clip(measured[:2], *self._teleop_range())
                if measured.shape[0] > GRIP_INDEX:
                    grip = float(measured[GRIP_INDEX])
                if self.settings.layout is not None:
                    base = self._teleop_base(measured)
                    grip_index = self.settings.layout.grip_index
                    grip = float(base[grip_index]) if grip_index is not None else grip
            move = commands.take()
            if move is not None and move.grip is not None:
                grip = float(move.grip)
            ticks += 1
            if position is None:
                # The controller is lost: hold; the operator's moves meanwhile are not kept (the arm cannot follow).
                self._send_hold("controller_lost")
                decision = TickDecision(tick=loop.tick, action=None, hold_reason="controller_lost")
                self._after_tick(decision, lateness, None, instruction, intervention=True)
            else:
                if move is not None:
                    position = np.clip(position + [move.dx, move.dy], *self._teleop_range())
                done = commands.done
                if self.settings.layout is None:
                    action = np.array([position[0], position[1], grip, 1.0 if done else 0.0], dtype=np.float32)
                else:  # the bundle's action space: the two axes, grip and done by name, the rest held
                    action = self.settings.layout.teleop_action(base, 0.0, 0.0, grip, done)
                    action[:2] = position
                seq = self.sink.send_action(action, now)
                self._holding_reason = None
                if done and seq >= 0:
                    done_seqs.add(seq)
                decision = TickDecision(tick=loop.tick, action=action)
                self._after_tick(decision, lateness, action, instruction, intervention=True)
            if done_seqs and self.state_source.actuated(done_seqs):
                return self._end(StepReport("done", self.latest_frame(), {}, "operator finished the step", ticks),
                                 None)
            if self.clock.now_ns() - progress_ns > timeout_ns:
                why = (f"take-over: no command actuated for {self.settings.step_timeout_s:g} s "
                       f"({'controller lost' if controller is None else 'last hold: ' + controller.hold_reason})")
                return self._end(StepReport("stalled", self.latest_frame(), {}, why, ticks), "stalled")
        return self._end(StepReport("stopped", self.latest_frame(), {}, "stop requested", ticks), "stopped")

    def _teleop_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The range of the two dimensions the console's axes move: the bundle's action limits (the reference's
        workspace is [0, 1])."""
        if self.settings.layout is None or self._action_low is None or self._action_high is None:
            return np.zeros(2), np.ones(2)
        return self._action_low[:2].astype(np.float64), self._action_high[:2].astype(np.float64)

    def _teleop_base(self, measured: np.ndarray) -> np.ndarray:
        """Where a take-over starts in the bundle's action space (vla_edge.step_end.ActionLayout.initial_action)."""
        layout = self.settings.layout
        assert layout is not None
        low = np.zeros(len(layout.action_names), np.float32) if self._action_low is None else self._action_low
        high = np.ones(len(layout.action_names), np.float32) if self._action_high is None else self._action_high
        return layout.initial_action(measured.astype(np.float32), low, high)

    def hold(self, reason: str) -> None:
        self._send_hold(reason)

    def latest_frame(self) -> np.ndarray | None:
        frame = self._frame
        return None if frame is None else frame.image

    # -- the tick's helpers --------------------------------------------------------------------------------------
    def _begin(self, instruction: str) -> None:
        self._scheduler.reset()
        if hasattr(self.policy, "reset"):
            self.policy.reset()  # a new step: the observation history starts again (LeRobot's policy.reset())
        self._instruction = instruction
        with self._memory.lock:
            self._memory.samples = None
            self._memory.last_executed = None

    def _end(self, report: StepReport, hold_reason: str | None) -> StepReport:
        if hold_reason is not None:
            self._send_hold(hold_reason)
        self._scheduler.reset()
        for observer in self.observers:
            observer.on_step_end(report, self._instruction)
        return report

    def _pull_frame(self) -> None:
        frame = self.camera.latest(self.settings.max_frame_age_ms)
        if frame is not None:
            self._frame = frame
            if getattr(self.policy, "history_length", 1) > 1:  # the policy reads past observations too
                state = self._measured_state()
                if state is not None and state.shape[0] == self.settings.state_dim:
                    self.policy.observe(frame.policy_input, state, frame.t_capture_ns)  # type: ignore[attr-defined]
        # Never plan on, show or record a stale frame, whatever the camera handed out.
        if self._frame is not None and self._frame_age_ms(self._frame) > self.settings.max_frame_age_ms:
            self._frame = None

    def _await_feedback(self, seq: int, loop: RateLoop) -> PlanAheadWait:
        """Wait until the controller reports command ``seq`` actuated and a frame taken after that has arrived, as
        long as the next chunk can still be planned before the next tick (its recent latency x1.5 + 5 ms).

        On a link with delay the action runs that much after it was sent, so a frame taken half a tick on can
        still show the arm before it: with 50 ms of delay towards the controller the policy finished 0-2 of 10
        steps alone instead of 7 (docs/wire.md §9). A frame counts as taken after the actuation when it is no
        older than the report's arrival minus half the link's round trip (measured from heartbeats) and 5 ms."""
        clock = self.clock
        latencies = self._scheduler.counters.latencies_ms[-20:]
        reserve_ns = int((1.5 * float(np.percentile(latencies, 90)) if latencies else 10.0) * 1e6) + 5_000_000
        budget_end = loop.next_tick_ns - reserve_ns
        round_trip = getattr(self.state_source, "link_round_trip_ns", lambda: None)() or 0  # optional: the stream's

        def ended(feedback: str, taken_after: int | None = None) -> PlanAheadWait:
            frame = self._frame
            return PlanAheadWait(seq, feedback, budget_end, clock.now_ns(), round_trip, taken_after,
                                 None if frame is None else frame.t_capture_ns)

        while not self.state_source.actuated({seq}):
            now = clock.now_ns()
            if now >= budget_end:
                return ended("no_report")  # not acknowledged in time: plan from what there is, as without a link
            clock.sleep_until_ns(min(now + _FEEDBACK_POLL_NS, budget_end))
        reported_at = getattr(self.state_source, "reported_at_ns", lambda seq: None)(seq)  # optional, as above
        taken_after = (clock.now_ns() if reported_at is None else reported_at) - round_trip // 2 - 5_000_000
        while self._frame is None or self._frame.t_capture_ns < taken_after:
            now = clock.now_ns()
            if now >= budget_end:
                return ended("no_frame", taken_after)
            clock.sleep_until_ns(min(now + _FEEDBACK_POLL_NS, budget_end))
            self._pull_frame()
        return ended("reported", taken_after)

    def _frame_age_ms(self, frame: Frame) -> float:
        return (self.clock.now_ns() - frame.t_capture_ns) / 1e6

    def _live_controller(self) -> ControllerState | None:
        """The controller's latest state report while it is alive, reporting and hearing us; None while it is dead,
        its report is stale, or it reports holding because our commands do not reach it (stale, handshake)."""
        report = self.state_source.fresh_state()
        if report is None or (report.holding and report.hold_reason in _DEAF_REASONS):
            return None
        return report

    def _measured_state(self) -> np.ndarray | None:
        """The controller's measured state, only while it is alive and reporting (never a frozen one)."""
        report = self._live_controller()
        if report is None:
            return None
        if self.settings.layout is not None:  # the state by name from the measured action-space position
            return self.settings.layout.state_from_measured(report.actual)
        return np.asarray(report.actual[: self.settings.state_dim], dtype=np.float32)

    def _new_refusal(self, report: ControllerState) -> bool:
        """True once per command the controller refused that this executor has not yet acted on."""
        if report.seq_rejected is not None:  # wire version 2: the newest refused command
            if report.seq_rejected > self._refusal_seen:  # sequence numbers are per daemon session, like ours
                self._refusal_seen = report.seq_rejected
                return True
            return False
        # version 1: a report holding for a refusal reason, newer than the last one acted on
        if report.holding and report.hold_reason in _REFUSAL_REASONS and report.t_sent_ns > self._refusal_seen:
            self._refusal_seen = report.t_sent_ns
            return True
        return False

    def _observe(self) -> Observation | None:
        frame = self._frame
        if frame is None or frame.seq == self._last_planned_seq:
            return None
        state = self._measured_state()
        if state is None or state.shape[0] != self.settings.state_dim:
            return None
        self._last_planned_seq = frame.seq
        return Observation(frame.image, state, self._instruction, frame.t_capture_ns, frame.views)

    def _plan(self, request: InferenceRequest) -> PlannedChunk:
        """Runs in the inference worker (or synchronously on a simulated clock); an exception it raises is logged
        with its traceback and counted by the scheduler (``counters.inference_errors_total``), and the arm holds."""
        started = time.perf_counter()  # wall time: what planning costs on this machine, also on a simulated clock
        obs = request.observation
        prefix = request.prefix if request.prefix.shape[0] > 0 else None
        k = self.settings.num_samples
        if request.attempt > 0 and self.settings.resample_num_samples is not None:
            k = self.settings.resample_num_samples
        with self._memory.lock:
            # As at the request: a slow policy's worker would otherwise see actions sent while it computed.
            previous, previous_start = self._memory.samples, self._memory.start_tick
            last = self._memory.last_executed
        # Guidance is passed only when there is some, so a policy without it is called as before.
        extra = {"guide": request.guide} if request.guide is not None else {}
        samples = self.policy.infer(obs.policy_input, obs.state, obs.instruction, k, prefix,
                                    t_obs_ns=obs.t_capture_ns, **extra)
        chunk = select_chunk(samples.actions)
        with self._memory.lock:
            override, self._memory.override_next = self._memory.override_next, False
        tier = "local"
        if self.monitor is None:
            verdict = Verdict(True, (), "confidence checks disabled")
        else:
            # The jerk check starts from the action sent before the chunk's first tick; a frozen prefix is the
            # chunk's own first rows (prefix[-1] would put a false jump from its end back to its start).
            context = ChunkContext(previous, previous_start, request.start_tick, last)
            verdict = self.monitor.evaluate(samples, chunk, context)
            if self.router is not None:
                routed = self.router.route(obs, prefix, k, samples, chunk, verdict, context,
                                           time.perf_counter() - started)
                samples, chunk, verdict, tier = routed.samples, routed.chunk, routed.verdict, routed.tier
        waiver = None
        if not verdict.passed:
            if override:
                waiver = f"approved by the operator despite {verdict.reason}"
            elif not self.settings.gate:
                waiver = "gate off (shadow mode)"
        return PlannedChunk(request, samples, verdict, chunk, (time.perf_counter() - started) * 1e3, waiver,
                            tier)

    def _accept(self, planned: PlannedChunk) -> None:
        with self._memory.lock:
            self._memory.samples = planned.samples
            self._memory.start_tick = planned.request.start_tick
        self._notify_chunk(planned)

    def _notify_chunk(self, planned: PlannedChunk) -> None:
        for observer in self.observers:
            observer.on_chunk(planned)

    def _send(self, decision: TickDecision) -> tuple[np.ndarray | None, int]:
        if decision.action is None:
            self._send_hold(decision.hold_reason or "no_chunk")
            return None, -1
        seq = self.sink.send_action(decision.action, self.clock.now_ns())
        self._holding_reason = None
        with self._memory.lock:
            self._memory.last_executed = decision.action
        return decision.action, seq

    def _send_hold(self, reason: str) -> None:
        if self._holding_reason != reason:  # one hold message per change of reason, not one per tick
            self.sink.send_hold(reason)
            self._holding_reason = reason

    def _after_tick(self, decision: TickDecision, lateness: int, sent: np.ndarray | None, instruction: str,
                    *, intervention: bool) -> None:
        self._progress()
        state = self._measured_state()
        for observer in self.observers:
            observer.on_tick(decision, lateness, sent, self._frame, state, instruction, intervention)


def _figures(verdict: Verdict) -> dict[str, float]:
    return {s.name: float(s.value) for s in verdict.signals}
