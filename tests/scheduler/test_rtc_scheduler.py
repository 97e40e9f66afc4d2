"""The scheduler's slow-path logic tick by tick: the delay estimate, requests made early enough for it, the frozen
prefix and guide each request carries, chunks re-timed after a hold, and a refused chunk under a long delay."""

from __future__ import annotations

import numpy as np
import pytest

from vla_edge.clock import SimClock
from vla_edge.scheduler import (
    ChunkScheduler,
    DelayEstimator,
    InferenceRequest,
    PlannedChunk,
    Recovery,
    SimulatedInference,
)
from vla_edge.types import ChunkSamples, Observation, SignalScore, Verdict

A = 4
PERIOD_NS = 100_000_000


def _observation() -> Observation:
    return Observation(np.zeros((8, 8, 3), np.uint8), np.zeros(3, np.float32), "x", 0)


def _planner(horizon: int, log: list, passed=lambda request: True):
    """Row i of a chunk is (start_tick + i, i, attempt, 0): which tick it was planned for, its row, its attempt."""

    def plan(request: InferenceRequest) -> PlannedChunk:
        log.append(request)
        ok = passed(request)
        chunk = np.array([[request.start_tick + i, i, request.attempt, 0] for i in range(horizon)], np.float32)
        if not ok:
            chunk[:, 3] = 1000.0  # a refused chunk's rows are marked: none may ever reach the motors
        verdict = Verdict(ok, (SignalScore("spread", 0.0, 1.0, ok),), "" if ok else "low confidence: spread")
        return PlannedChunk(request, ChunkSamples(chunk[None], np.zeros(2, np.float32), 0), verdict, chunk, 1.0)

    return plan


def _drive(sched: ChunkScheduler, clock: SimClock, ticks: range):
    """The executor's rhythm: the tick's decision, then half a tick later a chance to plan ahead."""
    decisions = []
    for tick in ticks:
        clock.sleep_until_ns(tick * PERIOD_NS)
        decision = sched.tick(tick)
        if decision.action is not None:
            clock.sleep_until_ns(tick * PERIOD_NS + PERIOD_NS // 2)
            sched.plan_ahead(tick + 1)
        decisions.append(decision)
    return decisions


def _scheduler(horizon: int, delay_s: float, log: list, clock: SimClock, **kwargs) -> ChunkScheduler:
    plan = _planner(horizon, log, kwargs.pop("passed", lambda r: True))
    return ChunkScheduler(plan, _observation, horizon=horizon, action_dim=A,
                          inference=SimulatedInference(plan, clock, delay_s), **kwargs)


def test_delay_estimate_is_a_high_quantile_of_a_window():
    est = DelayEstimator(quantile=0.9, window=10, initial=3)
    assert est.ticks == 3  # before any measurement
    for value in [2, 2, 2, 2, 2, 2, 2, 2, 2, 9]:
        est.observe(value)
    assert est.ticks == 2  # one outlier in ten is above the 90 % quantile
    est.observe(9)
    assert est.ticks == 9  # two in ten are not
    for _ in range(10):
        est.observe(4)
    assert est.ticks == 4  # the window forgets
    with pytest.raises(ValueError, match="quantile"):
        DelayEstimator(quantile=0.0)


def test_rtc_requests_freeze_the_estimated_delay_and_guide_with_the_rest():
    clock, log = SimClock(), []
    # 0.55 s: asked for mid-tick t, a chunk is there at tick t + 6, 5 ticks after its first row was due.
    with _scheduler(20, 0.55, log, clock, boundary="rtc") as sched:
        decisions = _drive(sched, clock, range(0, 80))
        assert sched.delay.ticks == 5 and sched.request_threshold() == 6
    sent = {d.tick: d.action for d in decisions if d.action is not None}
    first = min(sent)
    assert all(t in sent for t in range(first, 80)), "the arm held after the first chunk"
    assert len(log) >= 5
    for request in log[1:]:
        assert request.committed == 6 and request.prefix.shape == (5, A) and request.guide.shape == (1, A)
        # The frozen rows are exactly the actions that then ran (the guide row is replaced by the new chunk).
        for i in range(5):
            if request.start_tick + i < 80:
                np.testing.assert_array_equal(request.prefix[i], sent[request.start_tick + i])


def test_a_fast_policy_is_scheduled_as_before():
    """Plan-ahead with a chunk inside half a tick: delay 0, request at replan_when_remaining, nothing frozen."""
    clock, log = SimClock(), []
    with _scheduler(8, 0.0, log, clock, boundary="rtc", replan_when_remaining=4) as sched:
        _drive(sched, clock, range(0, 30))
        assert sched.delay.ticks == 0 and sched.request_threshold() == 4
    assert all(r.prefix.shape[0] == 0 for r in log) and all(r.committed in (0, 4) for r in log)


def test_delay_beyond_half_a_chunk_cannot_be_continuous_and_the_hold_is_re_timed():
    """H = 8 at 1 s (10 ticks): every chunk is asked for as soon as one arrives, and still arrives after the arm ran
    out. It is re-timed: its first row after the ones that ran is due at arrival (the arm held, it did not move)."""
    clock, log = SimClock(), []
    with _scheduler(8, 1.0, log, clock, boundary="rtc") as sched:
        decisions = _drive(sched, clock, range(0, 120))
        assert sched.delay.ticks == 10 and sched.request_threshold() == 7
        assert sched.counters.retimed == sched.counters.chunks_accepted and sched.counters.late_dropped == 0
    moves = [d for d in decisions if d.action is not None]
    assert moves and sum(d.action is None for d in decisions) > len(decisions) / 2
    # Each action is the row after the previous one of its chunk or the first row not committed to a new one:
    # no row is skipped, none repeats.
    for d in moves:
        request, row = d.chunk.request, int(d.action[1])
        assert row >= request.committed or request.committed == 0


def test_a_refused_chunk_under_a_long_delay_finishes_the_old_chunk_then_holds_then_resumes():
    """The meeting point with recovery: the refused chunk never runs; the old chunk's judged actions run out; the
    re-sample, asked for from a fresh frame, arrives during the hold and continues from where the arm stopped."""
    clock, log = SimClock(), []
    refused = {"left": 1}

    def passed(request: InferenceRequest) -> bool:
        if request.start_tick > 20 and refused["left"]:
            refused["left"] -= 1
            return False
        return True

    with _scheduler(30, 0.55, log, clock, boundary="rtc", passed=passed,
                    recovery=Recovery(tries=2, deadline_ticks=30)) as sched:
        decisions = _drive(sched, clock, range(0, 80))
        assert sched.counters.chunks_rejected == 1 and sched.counters.recovered == 1
        assert sched.counters.escalations == 0
    assert all(d.action is None or d.action[3] < 1000 for d in decisions), "a refused row ran"
    refusal = next(d.tick for d in decisions if d.rejected_chunk is not None)
    resample = next(r for r in log if r.attempt == 1)
    accepted = next(d for d in decisions if d.new_chunk is not None and d.new_chunk.request.attempt == 1)
    # The old chunk kept running after the refusal until its actions ran out, then the arm held ("resampling").
    assert decisions[refusal].action is not None
    holds = [d for d in decisions[refusal:accepted.tick] if d.action is None]
    assert holds and all(d.hold_reason == "resampling" for d in holds)
    # The re-sample froze the old actions that ran meanwhile and resumed right after them at its arrival.
    first_new = accepted.new_chunk.chunk[resample.committed]
    np.testing.assert_array_equal(decisions[accepted.tick].action, first_new)
    assert sum(d.action is None for d in decisions[accepted.tick:]) == 0


@pytest.mark.parametrize(("delay_s", "expected"), [(0.0, "none"), (0.25, "rtc")])
def test_auto_boundary_is_rtc_only_once_chunks_arrive_late(delay_s, expected):
    clock, log = SimClock(), []
    with _scheduler(8, delay_s, log, clock, boundary="auto") as sched:
        assert sched.boundary == "none"  # nothing measured yet
        _drive(sched, clock, range(0, 40))
        assert sched.boundary == expected
    later = log[2:]
    assert later and all((r.guide is not None) == (expected == "rtc") for r in later)
    assert all(r.prefix.shape[0] == (2 if expected == "rtc" else 0) for r in later)
