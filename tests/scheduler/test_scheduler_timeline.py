"""The chunk scheduler driven tick by tick on simulated time, with a planner that returns known arrays."""

import logging
import threading
import time

import numpy as np
import pytest

from vla_edge.clock import SimClock
from vla_edge.scheduler import (
    ChunkScheduler,
    InferenceRequest,
    PlannedChunk,
    RateLoop,
    Recovery,
    SimulatedInference,
    ThreadedInference,
)
from vla_edge.types import ChunkSamples, Observation, SignalScore, Verdict

H, A = 8, 4
PERIOD_NS = 100_000_000  # 10 Hz


def _observation() -> Observation:
    return Observation(np.zeros((96, 96, 3), np.uint8), np.zeros(3, np.float32), "x", 0)


def _planner(values_for_tick, *, passed=lambda req: True, log=None):
    """A planner whose chunk row i encodes the tick it is planned for, so splicing can be checked exactly."""

    def plan(request: InferenceRequest) -> PlannedChunk:
        if log is not None:
            log.append(request)
        ok = passed(request)
        # Rows of a rejected chunk are marked (+1000) so a test can tell if one ever reached the motors.
        mark = 0.0 if ok else 1000.0
        chunk = np.stack([values_for_tick(request.start_tick + i) + mark for i in range(H)]).astype(np.float32)
        verdict = Verdict(ok, (SignalScore("spread", 0.0, 1.0, ok),), "" if ok else "low confidence: spread")
        samples = ChunkSamples(chunk[None], np.zeros(4, np.float32), request.observation.t_capture_ns)
        return PlannedChunk(request, samples, verdict, chunk, latency_ms=1.0)

    return plan


def _make(planner, *, clock=None, delay_s=0.0, observe=_observation, **kwargs) -> ChunkScheduler:
    """A scheduler in its synchronous (simulated-time) mode: no thread, no sleeping."""
    clock = clock or SimClock()
    return ChunkScheduler(planner, observe, horizon=H, action_dim=A,
                          inference=SimulatedInference(planner, clock, delay_s), **kwargs)


def _ramp(tick: int) -> np.ndarray:
    return np.full(A, float(tick), np.float32)


def _drive(sched: ChunkScheduler, tick: int, clock: SimClock | None = None):
    """One control tick as the executor runs it: decide, then (after the action) let the next chunk be planned."""
    if clock is not None:
        clock.sleep_until_ns(tick * PERIOD_NS)
    decision = sched.tick(tick)
    if decision.action is not None:
        if clock is not None:
            clock.sleep_until_ns(tick * PERIOD_NS + PERIOD_NS // 2)
        sched.plan_ahead(tick + 1)
    return decision


def test_first_tick_holds_then_actions_follow_their_ticks():
    with _make(_planner(_ramp), replan_when_remaining=3) as sched:
        first = _drive(sched, 0)
        assert first.action is None and first.hold_reason == "no_chunk"
        sent = []
        for tick in range(1, 40):
            decision = _drive(sched, tick)
            if decision.action is not None:
                sent.append((tick, decision.action[0]))
                assert decision.chunk is not None and decision.chunk.request.start_tick <= tick
        # Every executed action is the one planned for exactly that tick: nothing executed late or early.
        assert sent and all(tick == value for tick, value in sent)
        assert len(sent) == 39, "planning between ticks should leave no tick without an action"
        assert sched.counters.chunks_requested >= 5


def test_late_actions_are_dropped_not_executed():
    with _make(_planner(_ramp), replan_when_remaining=2) as sched:
        sched.tick(0)
        assert sched.tick(1).action[0] == 1.0
        decision = sched.tick(5)  # ticks 2..4 were missed: their actions must not run now
        assert decision.action is not None and decision.action[0] == 5.0
        assert sched.counters.late_dropped == 3


def test_low_confidence_chunk_is_never_actuated_until_approved():
    with _make(_planner(_ramp, passed=lambda req: req.start_tick < 10), replan_when_remaining=3) as sched:
        actions = {}
        escalated = []
        for tick in range(0, 30):
            decision = _drive(sched, tick)
            if decision.action is not None:
                actions[tick] = decision.action
            if decision.escalate:
                escalated.append(tick)
        assert sched.blocked is not None and sched.counters.chunks_rejected == 1
        assert len(escalated) == 1 and sched.counters.escalations == 1
        rejected_start = sched.blocked.request.start_tick
        assert all(a[0] < 1000 for a in actions.values()), "an action of the rejected chunk ran"
        assert max(actions) <= rejected_start, "without re-samples the arm stops at the rejection"
        assert sched.tick(30).hold_reason == "low_confidence"
        assert sched.counters.chunks_requested == 3, "no new request while blocked"
        sched.reset()
        assert sched.blocked is None and sched.tick(31).hold_reason == "no_chunk"


def test_a_refused_chunk_is_resampled_while_the_old_chunk_finishes():
    refusals = {"left": 1}

    def passed(request):
        if request.start_tick >= 5 and refusals["left"]:
            refusals["left"] -= 1
            return False
        return True

    log: list[InferenceRequest] = []
    with _make(_planner(_ramp, passed=passed, log=log), replan_when_remaining=3,
               recovery=Recovery(tries=2, deadline_ticks=10)) as sched:
        decisions = [_drive(sched, tick) for tick in range(0, 20)]
    refused = [d for d in decisions if d.rejected_chunk is not None]
    assert len(refused) == 1 and not any(d.escalate for d in decisions)
    tick = refused[0].tick
    # The chunk before the refusal keeps running (its actions were judged when it arrived), nothing of the
    # refused one ever runs, and the re-sample is asked for from the next frame.
    assert decisions[tick].action is not None and decisions[tick].action[0] == tick
    assert all(d.action is None or d.action[0] < 1000 for d in decisions)
    assert [r.attempt for r in log].count(1) == 1
    assert sched.counters.resamples == 1 and sched.counters.recovered == 1 and sched.counters.escalations == 0
    assert sum(d.action is not None for d in decisions) == 19, "the re-sample arrived before the old chunk ran out"


def test_resampling_stops_after_its_tries_and_escalates():
    with _make(_planner(_ramp, passed=lambda req: req.start_tick < 5), replan_when_remaining=1,
               recovery=Recovery(tries=3, deadline_ticks=50)) as sched:
        decisions = [_drive(sched, tick) for tick in range(0, 25)]
    refused = [d.tick for d in decisions if d.rejected_chunk is not None]
    assert len(refused) == 4, "the first refusal and three re-samples"
    escalated = [d.tick for d in decisions if d.escalate]
    assert escalated == [refused[-1]]
    # While re-sampling with nothing left of the old chunk, the hold says why.
    assert any(d.hold_reason == "resampling" for d in decisions[refused[0]:escalated[0]])
    assert all(d.hold_reason == "low_confidence" for d in decisions[escalated[0]:])
    assert sched.counters.resamples == 3 and sched.counters.escalations == 1


def test_resampling_stops_at_its_deadline():
    with _make(_planner(_ramp, passed=lambda req: req.start_tick < 5), replan_when_remaining=3,
               recovery=Recovery(tries=100, deadline_ticks=4)) as sched:
        decisions = [_drive(sched, tick) for tick in range(0, 25)]
    refused = [d.tick for d in decisions if d.rejected_chunk is not None]
    escalated = [d.tick for d in decisions if d.escalate]
    assert len(escalated) == 1 and escalated[0] - refused[0] > 4 and escalated[0] - refused[0] <= 6


def test_an_approved_chunk_runs_despite_its_verdict():
    def plan(request):
        planned = _planner(_ramp, passed=lambda req: False)(request)
        return PlannedChunk(planned.request, planned.samples, planned.verdict, planned.chunk, 1.0,
                            waiver="approved by the operator")

    with _make(plan) as sched:
        decisions = [_drive(sched, tick) for tick in range(0, 6)]
    assert decisions[1].action is not None and decisions[1].chunk.waiver == "approved by the operator"
    assert sched.counters.chunks_rejected == 0


def test_prefix_carries_the_committed_actions_of_the_measured_delay():
    """A chunk takes a quarter second (asked for mid-tick, it is there 2 ticks after its first row was due): the
    two actions that run meanwhile are frozen, and they are exactly what then runs."""
    log: list[InferenceRequest] = []
    clock = SimClock()
    with _make(_planner(_ramp, log=log), clock=clock, delay_s=0.25, replan_when_remaining=4,
               boundary="freeze") as sched:
        sent = {}
        for tick in range(0, 30):
            decision = _drive(sched, tick, clock)
            if decision.action is not None:
                sent[tick] = decision.action
        assert sched.delay.ticks == 2
    later = [req for req in log if req.prefix.shape[0] > 0]
    assert len(later) >= 3, "no request carried a frozen prefix"
    for req in later:
        assert req.prefix.shape == (2, A) and req.guide is None
        for i in range(2):
            np.testing.assert_array_equal(req.prefix[i], sent[req.start_tick + i])


def test_no_prefix_unless_freezing():
    log: list[InferenceRequest] = []
    with _make(_planner(_ramp, log=log)) as sched:
        for tick in range(0, 12):
            _drive(sched, tick)
    assert len(log) >= 2 and all(req.prefix.shape == (0, A) for req in log)


def test_blend_smooths_a_boundary_jump():
    offset = {"value": 0.0}

    def values(tick):
        return np.full(A, tick + offset["value"], np.float32)

    with _make(_planner(values), replan_when_remaining=4, boundary="blend", blend_steps=3) as sched:
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


def test_inference_error_is_logged_counted_held_and_recovered(caplog):
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("session failed")
        return _planner(_ramp)(request)

    with caplog.at_level(logging.ERROR, logger="vla_edge.scheduler"), _make(flaky, replan_when_remaining=3) as sched:
        sched.tick(0)
        assert sched.tick(1).hold_reason == "inference_error"
        recovered = [_drive(sched, t) for t in range(2, 6)]
    assert any(d.action is not None for d in recovered)
    assert sched.counters.inference_errors_total == 1 and sched.counters.inference_errors == 0
    record = next(r for r in caplog.records if "planning the chunk" in r.getMessage())
    assert record.exc_info is not None and "session failed" in str(record.exc_info[1])


def test_no_observation_means_no_request_and_hold():
    with _make(_planner(_ramp), observe=lambda: None) as sched:
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

    # The robot's worker needs a little time: here a chunk takes a third of a tick of simulated time.
    clock = SimClock()
    with _make(plan, clock=clock, delay_s=0.033, replan_when_remaining=4, plan_ahead=plan_ahead) as sched:
        rows = []
        for tick in range(0, 30):
            if plan_ahead:
                decision = _drive(sched, tick, clock)
            else:
                clock.sleep_until_ns(tick * PERIOD_NS)
                decision = sched.tick(tick)
            if decision.action is not None:
                # Asked for at tick 0 while the arm held, the first chunk arrives at tick 1: the arm has not moved,
                # so it is re-timed to start there (plan-ahead asks half a tick early and needs no re-timing).
                retimed = 0 if plan_ahead or decision.chunk.request.start_tick > 0 else 1
                assert decision.action[0] == tick - retimed
                rows.append(int(decision.action[1]))
    assert len(log) >= 5
    if plan_ahead:
        # Each chunk runs rows 0..3 (H - replan_when_remaining), planned from the frame after the last action.
        assert rows == [0, 1, 2, 3] * (len(rows) // 4) + [0, 1, 2, 3][: len(rows) % 4]
    else:
        # Requested at the tick, a chunk arrives after its first tick has gone: its row 0 never runs (only the
        # first chunk's, re-timed after the hold it was asked for in).
        assert rows[0] == 0 and 0 not in rows[1:]


def test_a_long_simulated_inference_delay_is_measured_and_requested_ahead_of():
    """1.5 s inference, 50-action chunks at 10 Hz: the chunk asked for at a tick is there 15 ticks later."""
    clock = SimClock()
    log: list[InferenceRequest] = []

    def plan(request: InferenceRequest) -> PlannedChunk:
        log.append(request)
        chunk = np.array([[request.start_tick + i, 0, 0, 0] for i in range(50)], np.float32)
        samples = ChunkSamples(chunk[None], np.zeros(4, np.float32), 0)
        return PlannedChunk(request, samples, Verdict(True, ()), chunk, latency_ms=1500.0)

    sched = ChunkScheduler(plan, _observation, horizon=50, action_dim=A, replan_when_remaining=4,
                           inference=SimulatedInference(plan, clock, 1.5))
    decisions = [_drive(sched, tick, clock) for tick in range(0, 120)]
    first_action = next(d.tick for d in decisions if d.action is not None)
    assert first_action == 15
    # Planned for tick 1 while the arm held, it arrives at tick 15 (14 ticks late): the arm did not move
    # meanwhile, so the chunk is re-timed and its row 0 runs at tick 15 instead of its first 14 rows being dropped.
    assert decisions[15].chunk.request.start_tick == 1 and decisions[15].action[0] == 1
    assert sched.counters.retimed == 1 and sched.counters.delays_ticks[0] == 14
    # The measured delay (14, then 15 ticks) moves the next request forward: it went out while 15 or more actions
    # were left, not at replan_when_remaining (4), so the second chunk arrives before the first ends.
    assert log[1].committed >= 15 and sched.delay.ticks == 15
    assert len(log) >= 3 and all(d.action is not None for d in decisions[15:120])
    assert sched.counters.late_dropped == 0


def test_threaded_inference_delivers_and_discards():
    done = threading.Event()

    def plan(request):
        planned = _planner(_ramp)(request)
        done.set()
        return planned

    runner = ThreadedInference(plan)
    try:
        runner.submit(InferenceRequest(_observation(), 3, np.zeros((0, A), np.float32)))
        assert done.wait(30.0)
        deadline = time.monotonic() + 30.0
        result = None
        while result is None and time.monotonic() < deadline:
            result = runner.take_result()
            time.sleep(0.001)
        assert isinstance(result, PlannedChunk) and result.request.start_tick == 3
        runner.discard()
        assert runner.take_result() is None
    finally:
        runner.close()


def test_rate_loop_on_a_simulated_clock_lands_mid_tick_and_skips_rather_than_bunches():
    clock = SimClock()
    loop = RateLoop(20.0, clock)  # 50 ms period
    assert loop.wait() == 0 and clock.now_ns() == 0 and loop.tick == 1
    loop.wait_phase(0.5)
    assert clock.now_ns() == 25_000_000
    loop.wait_phase(0.25)  # already past: returns at once
    assert clock.now_ns() == 25_000_000
    clock.advance(0.160)  # miss about three ticks
    lateness = loop.wait()
    # The tick now running is the one due at 150 ms (tick 4); those due at 50 and 100 ms were skipped.
    assert lateness == 135_000_000 and loop.tick == 4 and loop.next_tick_ns == 200_000_000


def test_rate_loop_resumes_on_its_grid_after_a_pause():
    clock = SimClock()
    loop = RateLoop(10.0, clock)
    loop.wait()
    clock.advance(0.03)
    loop.resume()  # a new step 30 ms into the period: its first tick is the next grid point, not now
    assert loop.wait() == 0 and clock.now_ns() == 100_000_000
    clock.advance(5.04)  # a long pause (an operator's answer): no lateness reported, the grid is kept
    loop.resume()
    assert loop.wait() == 0 and clock.now_ns() == 5_200_000_000


def test_rate_loop_on_the_real_clock_paces_ticks():
    loop = RateLoop(200.0)  # 5 ms period
    started = time.monotonic_ns()
    for _ in range(4):
        loop.wait()
    assert time.monotonic_ns() - started >= 14_000_000  # three full periods at least, however loaded the machine


def test_bad_replan_threshold_is_refused():
    with pytest.raises(ValueError, match="replan_when_remaining"):
        ChunkScheduler(_planner(_ramp), _observation, horizon=H, action_dim=A, replan_when_remaining=H,
                       inference=SimulatedInference(_planner(_ramp), SimClock()))
