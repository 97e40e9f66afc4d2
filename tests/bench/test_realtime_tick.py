"""`scheduler.realtime_tick`: the control tick's SCHED_FIFO option (what `bench.jitter` and the executor use)."""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading

import pytest
from pydantic import ValidationError

from vla_edge.config import SchedulerSettings
from vla_edge.scheduler import realtime_tick


def _in_thread(body):
    """Scheduling policy is per thread: run ``body`` in a fresh one so the test runner's thread is never touched."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = body()
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_unset_priority_changes_nothing():
    def body():
        before = os.sched_getscheduler(0), sys.getswitchinterval()
        with realtime_tick(None) as granted:
            inside = os.sched_getscheduler(0), sys.getswitchinterval()
        return granted, before, inside

    granted, before, inside = _in_thread(body)
    assert granted is False and inside == before


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="Linux scheduling policies")
def test_fifo_inside_and_everything_restored_after(caplog):
    switch_before = sys.getswitchinterval()

    def body():
        with realtime_tick(7, switch_interval_ms=0.25) as granted:
            inside = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority, sys.getswitchinterval()
            frozen = gc.get_freeze_count()
        return granted, inside, os.sched_getscheduler(0), frozen

    assert gc.get_freeze_count() == 0
    with caplog.at_level(logging.WARNING, logger="vla_edge.scheduler"):
        granted, inside, after, frozen = _in_thread(body)
    assert gc.get_freeze_count() == 0  # unfrozen again on exit
    if granted:
        assert inside == (os.SCHED_FIFO, 7, pytest.approx(0.00025))
        assert frozen > 1000  # every object alive on entry is out of the collector's reach
    else:  # not root and no RLIMIT_RTPRIO: it says so and runs normally
        assert "not permitted" in caplog.text and inside[0] == os.SCHED_OTHER
    assert after == os.SCHED_OTHER
    assert sys.getswitchinterval() == pytest.approx(switch_before)


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="Linux scheduling policies")
def test_a_refused_priority_warns_and_runs_at_normal_priority(caplog):
    def body():
        with realtime_tick(100) as granted:  # beyond SCHED_FIFO's range: the kernel refuses, even for root
            return granted, os.sched_getscheduler(0)

    with caplog.at_level(logging.WARNING, logger="vla_edge.scheduler"):
        granted, policy = _in_thread(body)
    assert granted is False and policy == os.SCHED_OTHER
    assert "LimitRTPRIO=100" in caplog.text


def test_the_setting_is_validated():
    assert SchedulerSettings().realtime_priority is None  # off unless asked for
    assert SchedulerSettings(realtime_priority=10).realtime_priority == 10
    with pytest.raises(ValidationError):
        SchedulerSettings(realtime_priority=0)
    with pytest.raises(ValidationError):
        SchedulerSettings(gil_switch_interval_ms=0)
