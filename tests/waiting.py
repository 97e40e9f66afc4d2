"""Waiting in tests: on the event itself, under a deadline generous enough for a loaded machine.

A test that sleeps a fixed time and then asserts an asynchronous effect fails when the machine is busy (CI: 2
cores, often loaded): wait for the effect instead, with ``wait_for``. Its deadline only matters when the test is
going to fail anyway, so it is long. Timing claims (how fast something happens) belong in benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

GENEROUS_S = 30.0

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float = GENEROUS_S, what: str = "the condition",
             step_s: float = 0.005) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(step_s)
