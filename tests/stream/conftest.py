"""Fixtures for the action-stream tests: free loopback endpoints, settings, limits, a controller tick loop."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.waiting import GENEROUS_S

from vla_edge.config import StreamSettings
from vla_edge.controller import ActionLimits, ControllerClient, Setpoint


def free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def endpoint() -> object:
    """A factory of free loopback TCP endpoints."""
    return free_endpoint


@pytest.fixture
def demo_settings() -> StreamSettings:
    """Loopback endpoints without CURVE (the demo configuration)."""
    return StreamSettings(
        command_endpoint=free_endpoint(), state_endpoint=free_endpoint(), curve=False,
        heartbeat_ms=50.0, stale_after_ms=200.0, command_ttl_ms=150.0,
    )


@pytest.fixture
def limits() -> ActionLimits:
    return ActionLimits(low=[0.0, 0.0, 0.0, 0.0], high=[1.0, 1.0, 1.0, 1.0], max_delta=[0.2, 0.2, 1.0, 1.0])


class TickLoop:
    """Runs ``next_setpoint`` → fake motors → ``report`` at a fixed period in a thread, recording setpoints."""

    def __init__(self, client: ControllerClient, period_s: float) -> None:
        self.client = client
        self.period_s = period_s
        self.setpoints: list[tuple[int, Setpoint]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic_ns()
            setpoint = self.client.next_setpoint(now)
            self.setpoints.append((now, setpoint))
            self.client.report(setpoint.values)
            next_tick += self.period_s
            time.sleep(max(0.0, next_tick - time.monotonic()))

    def __enter__(self) -> TickLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@pytest.fixture
def tick_loop() -> type[TickLoop]:
    return TickLoop


def wait_until(predicate, timeout_s: float, step_s: float = 0.005) -> bool:
    # A wait of a second or more is a deadline for an effect: generous, so a loaded machine only makes it slower
    # (tests/waiting.py). Shorter ones are polls inside a test's own loop and keep their length.
    if timeout_s >= 1.0:
        timeout_s = max(timeout_s, GENEROUS_S)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())


@pytest.fixture
def wait() -> object:
    return wait_until


@pytest.fixture
def start_position() -> np.ndarray:
    return np.array([0.5, 0.5, 0.0, 0.0])


@pytest.fixture
def tmp_keys(tmp_path: Path) -> Path:
    from vla_edge.keys import generate_keys

    generate_keys(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("vla-edge")]
    assert not leaked, f"threads left running: {leaked}"
