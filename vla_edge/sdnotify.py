"""systemd's notify protocol: READY, STATUS, WATCHDOG and STOPPING datagrams to ``$NOTIFY_SOCKET``.

``WatchdogGate`` turns the watchdog into a liveness check of the control loop itself: the loop calls
``progress()`` on every tick, and a pinger thread sends ``WATCHDOG=1`` only if progress happened since its last
ping. A hung loop (deadlock, a stuck driver call, an inference that never returns inside the tick) stops the
pings, and systemd kills and restarts the service after ``WatchdogSec``. A thread that pinged on a timer alone
would keep a hung daemon looking healthy.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages; does nothing when not started by systemd (no ``NOTIFY_SOCKET``)."""

    def __init__(self, socket_path: str | None = None) -> None:
        address = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address or None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased). Returns False when there is no socket or sending failed."""
        if self._address is None:
            return False
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
                return True
            except OSError as exc:
                # Not fatal for the robot: systemd will notice the missing READY/WATCHDOG and act on its own.
                log.warning("sd_notify to %r failed: %s", self._address.replace("\0", "@"), exc)
                return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of systemd's ``WATCHDOG_USEC`` (as sd_watchdog_enabled recommends), or None when it is off.

    ``WATCHDOG_PID``, when set, must be this process: otherwise the watchdog belongs to someone else.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class WatchdogGate:
    """Pings the watchdog only while the control loop makes progress.

    The control tick calls ``progress()`` (cheap: one attribute write). The pinger wakes every
    ``interval_s``; it pings if ``progress()`` was called since its previous wake, and otherwise stays silent
    and logs once that the loop is stalled.
    """

    def __init__(self, notifier: Notifier, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("watchdog interval must be positive")
        self._notifier = notifier
        self._interval_s = interval_s
        self._progress = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings_sent = 0
        self.pings_withheld = 0
        self._stalled = False

    def progress(self) -> None:
        self._progress.set()

    def check_once(self) -> bool:
        """One pinger step: ping if the loop progressed since the last step. Returns whether it pinged."""
        if self._progress.is_set():
            self._progress.clear()
            self._notifier.watchdog()
            self.pings_sent += 1
            if self._stalled:
                log.warning("control loop progressing again; watchdog pings resumed")
            self._stalled = False
            return True
        if not self._stalled:  # log the transition, not every silent interval
            log.error("control loop made no progress for %.1f s; withholding the watchdog ping", self._interval_s)
        self._stalled = True
        self.pings_withheld += 1
        return False

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.check_once()

    def start(self) -> WatchdogGate:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="watchdog-gate", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s + 1.0)
            self._thread = None
