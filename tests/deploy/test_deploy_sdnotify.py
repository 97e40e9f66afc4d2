"""sd_notify over a real unix datagram socket; the watchdog gate pings only after control-loop progress."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.waiting import GENEROUS_S, wait_for
from vla_edge.sdnotify import Notifier, WatchdogGate, watchdog_interval_s


@pytest.fixture()
def notify_socket(tmp_path: Path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield str(path), sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


def test_messages_reach_the_socket_from_env(notify_socket, monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    assert n.enabled
    assert n.ready(status="loaded bundle reference")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=loaded bundle reference"
    n.status("step 3/10\nholding")
    assert sock.recv(4096).decode() == "STATUS=step 3/10 holding"
    n.watchdog()
    assert sock.recv(4096).decode() == "WATCHDOG=1"
    n.stopping()
    assert sock.recv(4096).decode() == "STOPPING=1"
    n.close()


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or os.uname().sysname != "Linux", reason="abstract sockets are Linux-only")
def test_abstract_namespace_socket(monkeypatch):
    name = f"vla-edge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert Notifier().ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready()


def test_missing_socket_is_not_fatal(tmp_path: Path):
    assert Notifier(str(tmp_path / "gone")).watchdog() is False


def test_watchdog_interval_from_environment():
    assert watchdog_interval_s({"WATCHDOG_USEC": "5000000"}) == 2.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}) == 2.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "bogus"}) is None


def test_gate_pings_only_after_progress(notify_socket):
    path, sock = notify_socket
    gate = WatchdogGate(Notifier(path), interval_s=1.0)
    assert gate.check_once() is False  # no tick yet: silence
    gate.progress()
    gate.progress()
    assert gate.check_once() is True  # many ticks: one ping
    assert gate.check_once() is False  # loop hung since: silence
    assert received(sock) == ["WATCHDOG=1"]
    assert (gate.pings_sent, gate.pings_withheld) == (1, 2)


def test_hung_loop_stops_the_pings_with_a_real_thread(notify_socket):
    """Counted in the gate's own checks, not in wall time, so a loaded machine changes nothing."""
    path, sock = notify_socket
    gate = WatchdogGate(Notifier(path), interval_s=0.05).start()
    hang = threading.Event()
    hung = threading.Event()
    stop = threading.Event()

    def control_loop() -> None:
        while not stop.is_set():
            if hang.is_set():
                hung.set()
                time.sleep(0.01)  # stuck: no progress reported
                continue
            gate.progress()
            time.sleep(0.01)

    loop = threading.Thread(target=control_loop, daemon=True)
    loop.start()
    pings: list[str] = []
    try:
        wait_for(lambda: pings.extend(received(sock)) or len(pings) >= 3, what="three pings while healthy")
        hang.set()
        assert hung.wait(GENEROUS_S)
        withheld = gate.pings_withheld
        wait_for(lambda: gate.pings_withheld > withheld, what="a check that finds no progress")
        received(sock)  # a ping for progress made before the hang may have landed until then
        withheld = gate.pings_withheld
        wait_for(lambda: gate.pings_withheld >= withheld + 5, what="five more checks while hung")
        while_hung = len(received(sock))
    finally:
        stop.set()
        loop.join()
        gate.stop()
    assert while_hung == 0
