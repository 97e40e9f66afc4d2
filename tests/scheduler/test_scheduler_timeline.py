"""The chunk scheduler driven tick by tick with a planner that returns known arrays."""

import threading
import time

import numpy as np
import pytest

from vla_edge.scheduler import ChunkScheduler, InferenceRequest, PlannedChunk, RateLoop
from vla_edge.types import ChunkSamples, Observation, SignalScore, Verdict

H, A = 8, 4


def _observation() -> Observation:
    return Observation(np.zeros((96, 96, 3), np.uint8), np.zeros(3, np.float32), "x", time.monotonic_ns())


def _planner(values_for_tick, *, passed=lambda req: True, delay_s=0.0, log=None):
    """A planner whose chunk row i encodes the tick it is planned for, so splicing can be checked exactly."""

    def plan(request: InferenceRequest) -> PlannedChunk:
        if log is not None:
            log.append(request)
        time.sleep(delay_s)
        ok = passed(request)
        # Rows of a rejected chunk are marked (+1000) so a test can tell if one ever reached the motors.
        mark = 0.0 if ok else 1000.0
        chunk = np.stack([values_for_tick(request.start_tick + i) + mark for i in range(H)]).astype(np.float32)
        verdict = Verdict(ok, (SignalScore("spread", 0.0, 1.0, ok),))
        samples = ChunkSamples(chunk[None], np.zeros(4, np.float32), request.observation.t_capture_ns)
        return PlannedChunk(request, samples, verdict, chunk, latency_ms=delay_s * 1e3)

    return plan


def _wait_idle(scheduler: ChunkScheduler) -> None:
    deadline = time.monotonic() + 2.0
    while scheduler._worker.busy and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.005)


def _ramp(tick: int) -> np.ndarray:
    return np.full(A, float(tick), np.float32)


def _drive(sched: ChunkScheduler, tick: int):
    """One control tick as the executor runs it: decide, then (after the action) let the next chunk be planned."""
    decision = sched.tick(tick)
    if decision.action is not None:
        sched.plan_ahead(tick + 1)
    _wait_idle(sched)
    return decision


def test_first_tick_holds_then_actions_follow_their_ticks():
    with ChunkScheduler(_planner(_ramp), _observation, horizon=H, action_dim=A, replan_when_remaining=3) as sched:
        first = _drive(sched, 0)
        assert first.action is None and first.hold_reason == "no_chunk"
        sent = []
        for tick in range(1, 40):
            decision = _drive(sched, tick)
            if decision.action is not None:
                sent.append((tick, decision.action[0]))
        # Every executed action is the one planned for exactly that tick: nothing executed late or early.
        assert sent and all(tick == value for tick, value in sent)
        assert len(sent) == 39, "planning between ticks should leave no tick without an action"
        assert sched.counters.chunks_requested >= 5


def test_late_actions_are_dropped_not_executed():
    with ChunkScheduler(_planner(_ramp), _observation, horizon=H, action_dim=A, replan_when_remaining=2) as sched:
        sched.tick(0)
        _wait_idle(sched)
        assert sched.tick(1).action[0] == 1.0
        decision = sched.tick(5)  # ticks 2..4 were missed: their actions must not run now
        assert decision.action is not None and decision.action[0] == 5.0
        assert sched.counters.late_dropped == 3


def test_low_confidence_chunk_is_never_actuated_until_approved():
    with ChunkScheduler(
        _planner(_ramp, passed=lambda req: req.start_tick < 10), _observation, horizon=H, action_dim=A,
        replan_when_remaining=3,
    ) as sched:
        actions = {}
        for tick in range(0, 30):
            decision = _drive(sched, tick)
            if decision.action is not None:
                actions[tick] = decision.action
        assert sched.blocked is not None and sched.counters.chunks_rejected == 1
        rejected_start = sched.blocked.request.start_tick
        assert all(a[0] < 1000 for a in actions.values()), "an action of the rejected chunk ran"
        assert max(actions) <= rejected_start + 1, "the arm kept moving after the rejection"
        assert sched.tick(30).hold_reason == "low_confidence"
        assert sched.counters.chunks_requested == 3, "no new request while blocked"
        sched.reset()
        assert sched.blocked is None and sched.tick(31).hold_reason == "no_chunk"


def test_prefix_carries_the_committed_actions():
    log: list[InferenceRequest] = []
    with ChunkScheduler(
        _planner(_ramp, log=log), _observation, horizon=H, action_dim=A, replan_when_remaining=4,
        boundary="freeze", expected_delay_ticks=2,
    ) as sched:
        for tick in range(0, 12):
            _drive(sched, tick)
    later = [req for req in log if req.prefix.shape[0] > 0]
    assert later, "no request carried a frozen prefix"
    for req in later:
        assert req.prefix.shape == (2, A)
        assert req.prefix[0, 0] == req.start_tick  # the committed action for the request's first tick


def test_no_prefix_unless_freezing():
    log: list[InferenceRequest] = []
    with ChunkScheduler(_planner(_ramp, log=log), _observation, horizon=H, action_dim=A) as sched:
        for tick in range(0, 12):
            _drive(sched, tick)
    assert len(log) >= 2 and all(req.prefix.shape == (0, A) for req in log)


def test_blend_smooths_a_boundary_jump():
    offset = {"value": 0.0}

    def values(tick):
        return np.full(A, tick + offset["value"], np.float32)

    with ChunkScheduler(
        _planner(values), _observation, horizon=H, action_dim=A, replan_when_remaining=4, boundary="blend",
        blend_steps=3,
    ) as sched:
        sent = []
        for tick in range(0, 20):
            if tick == 6:
                offset["value"] = 10.0  # the next chunk disagrees with the executing one by 10
            decision = _drive(sched, tick)
            if decision.action is not None:
                sent.append(float(decision.action[0]) - tick)
    jumps = np.abs(np.diff(sent))
    assert sent[-1] == pytest.approx(10.0)
    assert jumps.max() < 10.0, "blend should spread the 10-unit jump over several ticks"


def test_inference_error_holds_and_recovers():
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("session failed")
        return _planner(_ramp)(request)

    with ChunkScheduler(flaky, _observation, horizon=H, action_dim=A, replan_when_remaining=3) as sched:
        sched.tick(0)
        _wait_idle(sched)
        assert sched.tick(1).hold_reason == "inference_error"
        _wait_idle(sched)
        recovered = [sched.tick(t) for t in range(2, 6)]
        assert any(d.action is not None for d in recovered)


def test_no_observation_means_no_request_and_hold():
    with ChunkScheduler(_planner(_ramp), lambda: None, horizon=H, action_dim=A) as sched:
        for tick in range(5):
            assert sched.tick(tick).action is None
        assert sched.counters.chunks_requested == 0


@pytest.mark.parametrize("plan_ahead", [True, False])
def test_plan_ahead_runs_every_chunks_first_row(plan_ahead):
    log: list[InferenceRequest] = []

    def plan(request: InferenceRequest) -> PlannedChunk:
        log.append(request)
        chunk = np.array([[request.start_tick + i, i, 0, 0] for i in range(H)], np.float32)
        samples = ChunkSamples(chunk[None], np.zeros(4, np.float32), request.observation.t_capture_ns)
        return PlannedChunk(request, samples, Verdict(True, ()), chunk, latency_ms=0.0)

    with ChunkScheduler(plan, _observation, horizon=H, action_dim=A, replan_when_remaining=4,
                        plan_ahead=plan_ahead) as sched:
        rows = []
        for tick in range(0, 30):
            decision = _drive(sched, tick) if plan_ahead else sched.tick(tick)
            _wait_idle(sched)
            if decision.action is not None:
                assert decision.action[0] == tick
                rows.append(int(decision.action[1]))
    assert len(log) >= 5
    if plan_ahead:
        # Each chunk runs rows 0..3 (H - replan_when_remaining), planned from the frame after the last action.
        assert rows == [0, 1, 2, 3] * (len(rows) // 4) + [0, 1, 2, 3][: len(rows) % 4]
    else:
        # Requested at the tick, a chunk arrives after its first tick has gone: its row 0 never runs.
        assert 0 not in rows[1:] and rows.count(0) <= 1


def test_rate_loop_wait_phase_lands_mid_tick():
    loop = RateLoop(20.0)  # 50 ms period
    loop.wait()
    started = time.monotonic_ns()
    loop.wait_phase(0.5)
    waited_ms = (time.monotonic_ns() - started) / 1e6
    assert 15.0 <= waited_ms <= 40.0
    before = time.monotonic_ns()
    loop.wait_phase(0.25)  # already past: returns at once
    assert (time.monotonic_ns() - before) / 1e6 < 5.0


def test_rate_loop_skips_rather_than_bunches():
    loop = RateLoop(100.0)
    loop.wait()
    time.sleep(0.035)  # miss about three ticks
    lateness = loop.wait()
    assert lateness >= 0
    assert loop.tick >= 4


def test_bad_replan_threshold_is_refused():
    with pytest.raises(ValueError, match="replan_when_remaining"):
        ChunkScheduler(_planner(_ramp), _observation, horizon=H, action_dim=A, replan_when_remaining=H)
