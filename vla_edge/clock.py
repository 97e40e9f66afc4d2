"""Time for the control loop: the monotonic clock on the robot, a simulated clock in benchmarks and tests.

The executor and the scheduler read time only through a `Clock`. On the robot that is `MonotonicClock`
(``time.monotonic_ns`` and ``time.sleep``). Benchmarks, calibration and the fast tests run the very same executor on
a `SimClock`: sleeping advances simulated time at once, and callbacks scheduled with ``call_at`` (the simulated
arm's physics, a simulated inference finishing) run when time passes them. Nothing here knows about policies.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """Monotonic nanoseconds, and a way to wait until a point in them."""

    def now_ns(self) -> int: ...

    def sleep_until_ns(self, t_ns: int) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic_ns``; sleeping really sleeps."""

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until_ns(self, t_ns: int) -> None:
        wait = t_ns - time.monotonic_ns()
        if wait > 0:
            time.sleep(wait / 1e9)


class SimClock:
    """Simulated time, advanced only by sleeping. One thread only (the loop being simulated).

    ``call_at(t, fn)`` runs ``fn()`` when simulated time reaches ``t`` (in order of time, then of scheduling); a
    callback may schedule more. Sleeping to a time runs every callback due by then, each with ``now_ns()`` set to
    its own time, then stops at the time asked for.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = int(start_ns)
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def now_ns(self) -> int:
        return self._now

    def sleep_until_ns(self, t_ns: int) -> None:
        t_ns = int(t_ns)
        while self._timers and self._timers[0][0] <= t_ns:
            due, _, callback = heapq.heappop(self._timers)
            self._now = max(self._now, due)
            callback()
        self._now = max(self._now, t_ns)

    def advance(self, seconds: float) -> None:
        self.sleep_until_ns(self._now + int(round(seconds * 1e9)))

    def call_at(self, t_ns: int, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (int(t_ns), next(self._order), callback))
