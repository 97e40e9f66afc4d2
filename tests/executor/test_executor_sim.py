"""The robot's executor driven tick by tick on simulated time: the real `PolicyStepExecutor`, `ChunkScheduler` (in
its synchronous mode) and `ConfidenceMonitor`, on the pymunk world behind `SimulatedArm`. The policy is a scripted
one whose chunks and sample spread the test chooses, so each path of the loop can be reached on purpose."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

import numpy as np
import pytest

from hil.world import TabletopWorld
from vla_edge.camera import CameraStatus
from vla_edge.clock import SimClock
from vla_edge.confidence import ActionBounds, ConfidenceMonitor
from vla_edge.config import load_settings
from vla_edge.executor import ExecutorSettings, PolicyStepExecutor, TickObserver, step_done
from vla_edge.operator.escalation import TeleopChannel, TeleopCommand
from vla_edge.simulation import RunRecorder, SimulatedArm, StepRun
from vla_edge.types import ChunkSamples, Frame

H, A, STEP = 8, 4, 0.05
BOUNDS = ActionBounds(np.zeros(A), np.ones(A), np.array([0.08, 0.08, 1.0, 1.0]))


@dataclass
class Call:
    state: np.ndarray
    num_samples: int
    prefix: np.ndarray | None


class LinePolicy:
    """Walks the gripper to ``target`` at ``STEP`` per tick, then says done. ``spread(n)`` is how far apart the
    K samples of the n-th chunk are (0: identical); ``fail(n)`` raises instead."""

    horizon = H
    action_dim = A

    def __init__(self, target=(0.7, 0.5), spread=lambda n: 0.0, fail=lambda n: False, done=True) -> None:
        self.target = np.asarray(target, np.float32)
        self.spread = spread
        self.fail = fail
        self.done = done
        self.calls: list[Call] = []

    def infer(self, image, state, instruction, num_samples=8, prefix=None, t_obs_ns=None) -> ChunkSamples:
        n = len(self.calls)
        self.calls.append(Call(np.asarray(state).copy(), num_samples, prefix))
        if self.fail(n):
            raise RuntimeError(f"session failed on chunk {n}")
        here = np.asarray(state[:2], np.float32)
        rows = []
        for _ in range(H):
            delta = self.target - here
            distance = float(np.linalg.norm(delta))
            here = self.target.copy() if distance <= STEP else here + delta * (STEP / distance)
            arrived = self.done and float(np.linalg.norm(self.target - here)) < 1e-6
            rows.append([here[0], here[1], 0.0, 1.0 if arrived else 0.0])
        chunk = np.asarray(rows, np.float32)
        offsets = np.array([(1 if j % 2 else -1) * self.spread(n) for j in range(num_samples)], np.float32)
        actions = np.repeat(chunk[None], num_samples, axis=0)
        actions[:, :, 0] = np.clip(actions[:, :, 0] + offsets[:, None], 0.0, 1.0)
        return ChunkSamples(actions, np.zeros(4, np.float32), t_obs_ns or 0)


class Ticks(TickObserver):
    def __init__(self) -> None:
        self.decisions = []
        self.chunks = []
        self.ends = []

    def on_tick(self, decision, lateness_ns, sent, frame, state, instruction, intervention):
        self.decisions.append((decision, sent, intervention, frame))

    def on_chunk(self, planned):
        self.chunks.append(planned)

    def on_step_end(self, report, instruction):
        self.ends.append(report.outcome)


def _settings(**overrides) -> ExecutorSettings:
    values = dict(num_samples=4, control_rate_hz=10.0, replan_when_remaining=4, boundary="none", blend_steps=3,
                  max_frame_age_ms=250.0, step_timeout_s=4.0, state_dim=3, simulated_inference_delay_s=0.0)
    values.update(overrides)
    return ExecutorSettings(**values)


def _monitor() -> ConfidenceMonitor:
    # consistency off: identical samples make the MMD's median bandwidth degenerate; this test is about the loop.
    return ConfidenceMonitor(BOUNDS, None, {"spread": 0.05, "consistency": np.inf, "limits": 0.0, "jerk": 1.05},
                             spread_dims=np.array([0, 1]))


class Rig:
    def __init__(self, policy: LinePolicy, monitor=None, camera=None, **overrides) -> None:
        self.world = TabletopWorld(5)
        self.world.arrange({}, gripper=(0.3, 0.5))
        self.clock = SimClock()
        self.arm = SimulatedArm(self.world, self.clock, 10.0)
        self.ticks = Ticks()
        self.settings = _settings(**overrides)
        self.recorder = RunRecorder(self.settings.gate)
        self.recorder.run = StepRun(0, "policy", "stalled", None, "", 0)
        self.policy = policy
        self.executor = PolicyStepExecutor(policy, monitor if monitor is not None else _monitor(),
                                           camera or self.arm, self.arm, self.settings,
                                           observers=[self.ticks, self.recorder], state=self.arm, clock=self.clock)

    def run(self, stop=None, **kwargs):
        return self.executor.run_step(0, "put the red block in the left bin", stop or threading.Event(), **kwargs)

    @property
    def hold_reasons(self):
        return [d.hold_reason for d, sent, _, _ in self.ticks.decisions if sent is None]


def test_a_step_walks_to_done_planning_each_chunk_from_the_frame_after_the_last_action():
    rig = Rig(LinePolicy(target=(0.7, 0.5)))
    report = rig.run()
    assert report.outcome == "done" and rig.ticks.ends == ["done"]
    rig.clock.advance(0.1)  # the done action runs in the period after the tick that sent it
    assert np.allclose(rig.world.gripper_position(), (0.7, 0.5), atol=1e-6)
    # The first tick holds while the first chunk is planned; from then on every tick sends an action.
    assert rig.hold_reasons == ["no_chunk"]
    assert report.ticks == 1 + round(0.4 / STEP) and rig.arm.actions == report.ticks - 1
    # Every chunk after the first was planned from the state after the action before it (plan ahead, row 0 runs).
    states = [c.state[0] for c in rig.policy.calls]
    assert np.allclose(np.diff(states), STEP * (H - 4), atol=1e-5)
    assert rig.executor.scheduler.counters.late_dropped == 0
    assert rig.recorder.low_confidence_actuations == 0 and rig.recorder.run.chunks[0].actuated == H - 4


def test_a_refused_chunk_escalates_at_once_without_resamples_and_none_of_it_runs():
    rig = Rig(LinePolicy(spread=lambda n: 0.3 if n == 1 else 0.0))
    report = rig.run()
    assert report.outcome == "low_confidence" and "spread" in report.reason
    assert report.confidence["spread"] > 0.05
    # Chunk 0 ran rows 0..3; chunk 1 was refused: nothing after it moved, and the arm was told to hold.
    assert rig.arm.actions == H - 4 and rig.recorder.low_confidence_actuations == 0
    assert "low_confidence" in rig.arm.holds and rig.hold_reasons[-1] == "low_confidence"
    assert rig.executor.scheduler.counters.escalations == 1
    refused = [c for c in rig.ticks.chunks if not c.admitted]
    assert len(refused) == 1 and not refused[0].verdict.passed


def test_a_refused_chunk_is_resampled_with_more_samples_and_the_step_goes_on():
    rig = Rig(LinePolicy(spread=lambda n: 0.3 if n == 1 else 0.0), resample_tries=2, resample_num_samples=8)
    report = rig.run()
    assert report.outcome == "done"
    counters = rig.executor.scheduler.counters
    assert counters.chunks_rejected == 1 and counters.resamples == 1 and counters.recovered == 1
    assert [c.num_samples for c in rig.policy.calls[:3]] == [4, 4, 8]
    assert [c.attempt for c in rig.recorder.run.chunks[:3]] == [0, 0, 1]
    assert rig.recorder.low_confidence_actuations == 0
    # The old chunk's judged actions kept the arm going while the re-sample was planned: no tick held.
    assert rig.hold_reasons == ["no_chunk"]


def test_resampling_gives_up_after_its_tries():
    rig = Rig(LinePolicy(target=(0.9, 0.5), spread=lambda n: 0.3 if n >= 1 else 0.0), resample_tries=2,
              replan_when_remaining=1)
    report = rig.run()
    assert report.outcome == "low_confidence"
    counters = rig.executor.scheduler.counters
    assert counters.chunks_rejected == 3 and counters.resamples == 2 and counters.escalations == 1
    assert "resampling" in rig.hold_reasons and rig.recorder.low_confidence_actuations == 0


def test_an_operator_approval_runs_the_refused_chunk_once():
    rig = Rig(LinePolicy(spread=lambda n: 0.3 if n in (0, 1) else 0.0))
    report = rig.run(override_once=True)
    assert report.outcome == "low_confidence", "the approval covers one chunk; the next refusal escalates again"
    first = rig.ticks.chunks[0]
    assert first.admitted and not first.verdict.passed and first.waiver.startswith("approved by the operator")
    assert rig.arm.actions == H - 4 and rig.recorder.low_confidence_actuations == 0


def test_shadow_mode_runs_every_chunk_and_records_its_verdict():
    rig = Rig(LinePolicy(spread=lambda n: 0.12), gate=False, resample_tries=3)
    report = rig.run()
    assert report.outcome == "done"
    assert rig.executor.scheduler.counters.chunks_rejected == 0 and rig.executor.scheduler.counters.resamples == 0
    assert all(not c.passed for c in rig.recorder.run.chunks)
    assert all(c.waiver == "gate off (shadow mode)" for c in rig.ticks.chunks)


def test_a_step_that_never_says_done_stalls_at_its_timeout():
    rig = Rig(LinePolicy(done=False), step_timeout_s=2.0)
    report = rig.run()
    assert report.outcome == "stalled" and report.ticks == 20 and "2 s" in report.reason
    assert rig.arm.holds["stalled"] == 1


def test_stop_ends_the_step_before_anything_moves():
    rig = Rig(LinePolicy())
    stop = threading.Event()
    stop.set()
    assert rig.run(stop).outcome == "stopped" and rig.arm.actions == 0 and "stopped" in rig.arm.holds


def test_a_stalled_camera_holds_the_arm_and_the_step_stalls():
    rig = Rig(LinePolicy(), step_timeout_s=1.0)
    rig.arm.status = CameraStatus.STALLED
    report = rig.run()
    assert report.outcome == "stalled" and "camera_stalled" in report.reason
    assert rig.arm.actions == 0 and rig.policy.calls == [] and rig.executor.latest_frame() is None


class FrozenCamera:
    """A camera whose only frame was taken long ago (a stalled driver that still hands out its last image)."""

    status = CameraStatus.OK

    def __init__(self, frame: Frame) -> None:
        self.frame = frame

    def latest(self, max_age_ms=None):
        return self.frame


def test_a_frame_older_than_the_limit_is_never_planned_on():
    world = TabletopWorld(5)
    old = Frame(world.render(), t_capture_ns=0, seq=1)
    rig = Rig(LinePolicy(), camera=FrozenCamera(old), step_timeout_s=1.0)
    rig.clock.advance(2.0)  # the frame is now 2 s old; the limit is 250 ms
    report = rig.run()
    assert report.outcome == "stalled" and rig.policy.calls == [] and rig.arm.actions == 0


def test_a_planner_exception_is_logged_with_its_traceback_counted_and_held(caplog):
    rig = Rig(LinePolicy(fail=lambda n: n == 0))
    with caplog.at_level(logging.ERROR, logger="vla_edge.scheduler"):
        report = rig.run()
    assert report.outcome == "done", "the next chunk planned fine and the step went on"
    assert rig.executor.scheduler.counters.inference_errors_total == 1
    assert "inference_error" in rig.hold_reasons
    record = next(r for r in caplog.records if "planning the chunk" in r.getMessage())
    assert record.exc_info is not None and "session failed on chunk 0" in str(record.exc_info[1])


def test_teleoperation_moves_the_arm_from_the_channel_and_marks_interventions():
    rig = Rig(LinePolicy())
    channel = TeleopChannel()
    channel.begin(0)
    channel.put(TeleopCommand(dx=0.04, dy=0.0))

    class Operator(TickObserver):
        """Presses on while the executor ticks: two more moves, then done."""

        def __init__(self):
            self.ticks = 0

        def on_tick(self, decision, lateness_ns, sent, frame, state, instruction, intervention):
            self.ticks += 1
            if self.ticks in (1, 2):
                channel.put(TeleopCommand(dx=0.04, dy=0.0, grip=1.0 if self.ticks == 2 else None))
            elif self.ticks == 3:
                channel.put(TeleopCommand(dx=0.0, dy=0.0, done=True))

    rig.executor.observers.append(Operator())
    report = rig.executor.teleoperate(0, "put the red block in the left bin", channel, threading.Event())
    # Done on the fourth tick, acknowledged as actuated by the controller's report before the fifth.
    assert report.outcome == "done" and report.ticks == 5
    assert all(intervention for _, _, intervention, _ in rig.ticks.decisions)
    assert rig.clock.now_ns() > 0 and rig.world.gripper_position()[0] == pytest.approx(0.3 + 3 * 0.04, abs=1e-6)
    assert rig.world.grip_closed()


def test_teleoperation_stops_on_request():
    rig = Rig(LinePolicy())
    stop = threading.Event()
    stop.set()
    report = rig.executor.teleoperate(0, "x", TeleopChannel(), stop)
    assert report.outcome == "stopped" and rig.arm.actions == 0


def test_consecutive_steps_keep_one_tick_grid():
    rig = Rig(LinePolicy(target=(0.5, 0.5)))
    rig.run()
    ended = rig.clock.now_ns()
    rig.policy.target = np.asarray((0.6, 0.5), np.float32)
    rig.run()
    # The second step's first tick came one period after the first step's last tick, not in the same period.
    assert rig.clock.now_ns() - ended >= 100_000_000
    assert rig.arm.hold_periods >= 2


def test_nothing_runs_or_completes_while_the_controller_is_lost():
    rig = Rig(LinePolicy(target=(0.4, 0.5)), step_timeout_s=1.0)
    rig.arm.controller_alive = False
    report = rig.run()
    assert report.outcome == "stalled" and "controller_lost" in report.reason
    assert rig.policy.calls == [] and rig.arm.actions == 0 and rig.arm.holds["controller_lost"] == 1


class RefusingController:
    """The arm's state, with the controller reporting once that it refused command ``seq`` (wire v2)."""

    def __init__(self, arm, seq):
        self.arm, self.seq = arm, seq

    def fresh_state(self):
        state = self.arm.fresh_state()
        if state is not None and state.seq_applied >= self.seq:
            return replace(state, seq_rejected=self.seq)
        return state

    def actuated(self, seqs):
        return self.arm.actuated(seqs)


def test_a_refused_command_drops_the_rest_of_its_chunk_and_replans_from_the_measured_position():
    rig = Rig(LinePolicy(target=(0.7, 0.5)))
    rig.executor.state_source = RefusingController(rig.arm, 1)
    report = rig.run()
    assert report.outcome == "done"
    assert "replan_after_refusal" in rig.hold_reasons and rig.hold_reasons.count("replan_after_refusal") == 1
    # Chunk 0 was cut after its refusal was reported; the next chunk was planned from where the arm was.
    assert len(rig.policy.calls) >= 2 and rig.policy.calls[1].state[0] == pytest.approx(0.3 + 2 * STEP, abs=1e-5)


def test_teleoperation_is_rebased_and_stalls_without_a_controller():
    rig = Rig(LinePolicy(), step_timeout_s=1.0)
    rig.arm.controller_alive = False
    channel = TeleopChannel()
    channel.begin(0)
    channel.put(TeleopCommand(dx=0.04, dy=0.0))
    report = rig.executor.teleoperate(0, "x", channel, threading.Event())
    assert report.outcome == "stalled" and "controller lost" in report.reason and rig.arm.actions == 0


def test_hold_is_sent_once_per_change_of_reason():
    rig = Rig(LinePolicy(), step_timeout_s=1.0)
    rig.arm.status = CameraStatus.STALLED
    rig.run()
    assert rig.arm.holds["camera_stalled"] == 1 and rig.arm.holds["stalled"] == 1
    rig.executor.hold("idle")
    rig.executor.hold("idle")
    assert rig.arm.holds["idle"] == 1


def test_the_done_flag_is_read_in_one_place():
    assert step_done(np.array([0.1, 0.2, 0.0, 1.0])) and not step_done(np.array([0.1, 0.2, 1.0, 0.0]))


def test_executor_settings_come_from_the_one_config_object():
    from vla_edge.bundle import load_bundle
    from vla_edge.paths import REFERENCE_BUNDLE_DIR

    manifest = load_bundle(REFERENCE_BUNDLE_DIR).manifest
    settings = load_settings(None, scheduler={"replan_when_remaining": 50, "control_rate_hz": 20.0},
                             recovery={"resample_tries": 3, "resample_num_samples": 16}, policy={"num_samples": 6})
    derived = ExecutorSettings.from_settings(settings, manifest, gate=False)
    assert derived.replan_when_remaining == manifest.horizon - 1  # clamped to what the bundle's chunks allow
    assert derived.control_rate_hz == 20.0 and derived.num_samples == 6 and derived.gate is False
    assert derived.resample_tries == 3 and derived.resample_num_samples == 16
    assert derived.simulated_inference_delay_s is None  # the robot's mode unless a simulation asks


def test_recoveries_are_counted_on_the_daemons_metrics():
    from vla_edge.scheduler import InferenceRequest, PlannedChunk
    from vla_edge.telemetry import DaemonMetrics
    from vla_edge.telemetry.observer import MetricsObserver
    from vla_edge.types import Verdict

    metrics = DaemonMetrics()
    observer = MetricsObserver(metrics)
    samples = ChunkSamples(np.zeros((1, H, A), np.float32), np.zeros(4, np.float32), 0)

    def planned(attempt, passed):
        request = InferenceRequest(None, 0, np.zeros((0, A), np.float32), attempt=attempt)  # type: ignore[arg-type]
        return PlannedChunk(request, samples, Verdict(passed, ()), samples.actions[0], 1.0)

    for attempt, passed in [(0, True), (1, False), (2, True)]:
        observer.on_chunk(planned(attempt, passed))
    metrics.record_task_event("step_retry", {"after": "stalled"})
    metrics.record_task_event("verified", {"scope": "checkpoint", "ok": True, "sure": True})
    metrics.record_task_event("verified", {"scope": "step", "ok": True, "sure": False})
    value = metrics.registry.get_sample_value
    assert value("vla_edge_recoveries_total", {"kind": "resample", "outcome": "refused"}) == 1
    assert value("vla_edge_recoveries_total", {"kind": "resample", "outcome": "accepted"}) == 1
    assert value("vla_edge_recoveries_total", {"kind": "step_retry", "outcome": "stalled"}) == 1
    assert value("vla_edge_automatic_verifications_total", {"scope": "checkpoint", "decision": "as_expected"}) == 1
    assert value("vla_edge_automatic_verifications_total", {"scope": "step", "decision": "unsure"}) == 1


def test_plan_ahead_waits_are_counted_on_the_daemons_metrics():
    # The simulated arm reports each action as it runs (an instant link): every plan-ahead finds the report and a
    # frame taken after it, and each wait is counted by what it ended in (vla_edge_plan_ahead_total{feedback}).
    from vla_edge.telemetry import DaemonMetrics
    from vla_edge.telemetry.observer import MetricsObserver

    metrics = DaemonMetrics()
    rig = Rig(LinePolicy(target=(0.7, 0.5)))
    rig.executor.observers.append(MetricsObserver(metrics))
    assert rig.run().outcome == "done"
    waits = rig.executor.plan_ahead_feedback
    assert waits["reported"] == rig.arm.actions > 0, dict(waits)  # one after each action sent
    assert set(waits) == {"reported"}, dict(waits)
    value = metrics.registry.get_sample_value
    assert value("vla_edge_plan_ahead_total", {"feedback": "reported"}) == waits["reported"]
