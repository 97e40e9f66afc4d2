"""Daemon side of the action stream: commands out to the motor controller, state and heartbeats back.

Two sockets, both bound by the daemon (CURVE servers), both connected by the controller:

* command channel (``settings.command_endpoint``): PUB → the controller's conflating SUB. Carries only
  ``ActionCommand`` and ``Hold``, each of which supersedes everything before it, so the controller keeps at
  most one command waiting however long it stalls (no stale backlog).
* session channel (``settings.state_endpoint``): ROUTER ⇄ the controller's DEALER. Handshake (Hello →
  Welcome → Ready), heartbeats both ways with clock samples, and the controller's ``StateReport``.

No action is sent before the controller is ready (it has a session and has seen the command channel live),
whichever side starts first; until then the daemon publishes ``Hold("handshake")`` every heartbeat, which is
also how a slow-joining subscriber proves its subscription works. See docs/wire.md.

What the motors were given is known from the controller's reports, not from what was sent: each report's
``seq_applied`` names the last command the controller actuated, and a version-2 report also carries its values
as actuated (``applied``). `applied_since` lists every command a report showed executed, with the state
reported right after; with `last_action` (what went out under which number, for version-1 controllers, which
actuate a command's values unchanged or reject it) it tells the recorder which command ran.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from vla_edge.config import StreamSettings
from vla_edge.keys import authorized_dir, make_curve_server
from vla_edge.wire import (
    MAX_ACTION_DIM,
    ActionCommand,
    Decoder,
    Heartbeat,
    Hello,
    Hold,
    Ready,
    StateReport,
    StreamError,
    Welcome,
    check_security,
    configure_socket,
    encode,
)

log = logging.getLogger(__name__)

# Peer is declared dead after this many heartbeat intervals without a valid message.
DEAD_AFTER_HEARTBEATS = 3
_APPLIED_KEPT = 256  # executed commands remembered (25 s at 10 Hz): the recorder looks a few ticks back


@dataclass(frozen=True)
class SentAction:
    """An action command as published: its sequence number and values."""

    seq: int
    values: tuple[float, ...]


@dataclass(frozen=True)
class AppliedCommand:
    """A command the controller reported executed: the first report whose ``seq_applied`` was ``seq``."""

    seq: int
    actual: tuple[float, ...]  # that report's ``actual``: what the motors did right after executing it
    applied: tuple[float, ...] | None  # its ``applied`` (wire v2): the values the motors were given; None in v1
    t_received_ns: int


_MONITORED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class ActionStream:
    """Publishes action commands to one motor controller and tracks what it actually did."""

    def __init__(self, settings: StreamSettings, action_dim: int, *, keys_dir: Path | None = None) -> None:
        if not 1 <= action_dim <= MAX_ACTION_DIM:
            raise StreamError(f"action_dim must be between 1 and {MAX_ACTION_DIM}, got {action_dim}")
        check_security(settings.curve, [settings.command_endpoint, settings.state_endpoint])
        self._settings = settings
        self._action_dim = action_dim
        self._keys_dir = Path(keys_dir) if keys_dir is not None else settings.keys_dir
        self._heartbeat_ns = int(settings.heartbeat_ms * 1e6)
        self._ttl_ns = int(settings.command_ttl_ms * 1e6)
        self._session = secrets.randbits(63)
        self._lock = threading.Lock()  # guards the PUB socket (caller + I/O thread) and the fields below
        self._seq = 0
        self._peer: bytes | None = None  # ROUTER identity of the current controller connection
        self._instance: int | None = None  # the controller instance that said Hello last
        self._ready = threading.Event()
        self._last_rx_ns: int | None = None
        self._peer_heartbeat: tuple[int, int] = (0, 0)  # (its t_sent_ns, our receive time)
        self._state: StateReport | None = None
        self._state_rx_ns: int | None = None
        # Commands the controller reported actuating (distinct seq_applied values, newest last), with its report.
        self._applied: deque[AppliedCommand] = deque(maxlen=_APPLIED_KEPT)
        self._last_action: SentAction | None = None
        self._round_trips: deque[int] = deque(maxlen=16)  # from the controller's heartbeat echoes
        self._last_refusal_log: dict[str, int] = {}
        self._counters: Counter[str] = Counter()
        self._decoder = Decoder("controller")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._auth: ThreadAuthenticator | None = None
        self._pub: zmq.Socket | None = None
        self._router: zmq.Socket | None = None
        self._monitors: list[zmq.Socket] = []

    # ---- lifecycle ----

    def start(self) -> None:
        if self._thread is not None:
            raise StreamError("ActionStream.start() called twice")
        ctx = zmq.Context()
        self._ctx = ctx
        try:
            if self._settings.curve:
                allowed = authorized_dir(self._keys_dir)
                self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("vla_edge.stream.auth"))
                self._auth.start()
                self._auth.configure_curve(domain="*", location=str(allowed))
            self._pub = self._make_socket(zmq.PUB, self._settings.command_endpoint)
            # The conflating SUB keeps one message; a few here only ride out a TCP hiccup, they are never
            # queued for a controller that is not connected (PUB drops instead).
            self._pub.setsockopt(zmq.SNDHWM, 4)
            self._router = self._make_socket(zmq.ROUTER, self._settings.state_endpoint)
            self._router.setsockopt(zmq.SNDHWM, 4)
            self._router.setsockopt(zmq.RCVHWM, 64)
        except Exception:
            self.close()
            raise
        self._thread = threading.Thread(target=self._io_loop, name="vla-edge-stream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for sock in [*self._monitors, self._pub, self._router]:
            if sock is not None:
                sock.close(linger=0)
        self._monitors = []
        self._pub = self._router = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> ActionStream:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- what the scheduler calls ----

    @property
    def session(self) -> int:
        return self._session

    def wait_for_controller(self, timeout_s: float) -> bool:
        """True once a controller has completed the handshake (it will act on commands sent from now on)."""
        return self._ready.wait(timeout_s)

    def send_action(self, values: np.ndarray, t_due_ns: int) -> int:
        """Publish one command due at ``t_due_ns`` (this process's monotonic clock); its deadline is due + TTL.

        Returns its sequence number, or -1 when no controller is ready: then nothing is sent (counted as
        ``unsent_not_ready``), because a command sent before the handshake could be lost without a trace.
        """
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (self._action_dim,):
            raise StreamError(f"action has shape {array.shape}, expected ({self._action_dim},)")
        with self._lock:
            if not self._ready.is_set():
                self._counters["unsent_not_ready"] += 1
                return -1
            seq = self._next_seq()
            command = ActionCommand(
                session=self._session,
                seq=seq,
                t_sent_ns=time.monotonic_ns(),
                t_due_ns=int(t_due_ns),
                deadline_ns=int(t_due_ns) + self._ttl_ns,
                values=[float(x) for x in array],
            )
            self._publish(encode(command), "sent_action")
            self._last_action = SentAction(seq, tuple(command.values))
            return seq

    def send_hold(self, reason: str) -> None:
        """Ask the controller to keep its last actuated position until the next command."""
        with self._lock:
            self._send_hold_locked(reason[:64])

    def latest_state(self) -> StateReport | None:
        with self._lock:
            return self._state

    def fresh_state(self, max_age_ns: int | None = None) -> StateReport | None:
        """The latest state report if the controller is alive and the report is at most ``max_age_ns`` old
        (default ``stale_after_ms``): what may be planned from. None while the controller is dead or stale."""
        limit = int(self._settings.stale_after_ms * 1e6) if max_age_ns is None else max_age_ns
        with self._lock:
            now = time.monotonic_ns()
            if self._state is None or self._state_rx_ns is None or not self._alive_locked(now):
                return None
            return self._state if now - self._state_rx_ns <= limit else None

    def actuated(self, seqs: set[int] | frozenset[int]) -> bool:
        """Whether the controller has reported actuating any of the commands ``seqs``."""
        with self._lock:
            return any(applied.seq in seqs for applied in self._applied)

    def reported_at_ns(self, seq: int) -> int | None:
        """When the state report that first showed command ``seq`` executed arrived (None: not seen, or no longer
        remembered)."""
        with self._lock:
            return next((applied.t_received_ns for applied in self._applied if applied.seq == seq), None)

    def link_round_trip_ns(self) -> int | None:
        """The shortest round trip of the last 16 heartbeat exchanges (the link's delay plus the peers' turnaround;
        under asymmetric delay, the sum of both directions). None before the first."""
        with self._lock:
            return min(self._round_trips) if self._round_trips else None

    def last_action(self) -> SentAction | None:
        """The newest action command published (None before the first)."""
        with self._lock:
            return self._last_action

    def applied_since(self, seq: int) -> list[AppliedCommand]:
        """Commands numbered ``seq`` or later that a state report showed executed, oldest first (the last
        ``_APPLIED_KEPT`` executions are remembered). A command never listed here was not executed, or its
        report has not arrived yet: a rejected command is never listed."""
        with self._lock:
            return [a for a in self._applied if a.seq >= seq]

    def controller_alive(self) -> bool:
        with self._lock:
            return self._alive_locked(time.monotonic_ns())

    def controller_ready(self) -> bool:
        return self._ready.is_set()

    def counters(self) -> dict[str, int]:
        with self._lock:
            merged = Counter(self._counters)
        merged.update({f"rejected_{k}": v for k, v in self._decoder.rejected.items()})
        return dict(merged)

    # ---- internals ----

    def _make_socket(self, kind: int, endpoint: str) -> zmq.Socket:
        assert self._ctx is not None
        sock = self._ctx.socket(kind)
        configure_socket(sock, self._settings.heartbeat_ms, receives=kind != zmq.PUB)
        if self._settings.curve:
            make_curve_server(sock, self._keys_dir)
        monitor = sock.get_monitor_socket(_MONITORED)
        self._monitors.append(monitor)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise StreamError(f"cannot bind {endpoint}: {exc.strerror}; is another vla-edge running?") from None
        return sock

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    def _send_hold_locked(self, reason: str) -> None:
        hold = Hold(session=self._session, seq=self._next_seq(), t_sent_ns=time.monotonic_ns(), reason=reason)
        self._publish(encode(hold), "sent_hold")

    def _publish(self, data: bytes, counter: str) -> None:
        if self._pub is None:
            raise StreamError("ActionStream is not started")
        self._pub.send(data, zmq.NOBLOCK)  # PUB never blocks; at its HWM it drops, and the deadline covers it
        self._counters[counter] += 1

    def _alive_locked(self, now_ns: int) -> bool:
        return self._last_rx_ns is not None and now_ns - self._last_rx_ns < DEAD_AFTER_HEARTBEATS * self._heartbeat_ns

    def _io_loop(self) -> None:
        assert self._router is not None
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        next_beat = time.monotonic_ns()
        while not self._stop.is_set():
            timeout_ms = max(0.0, min(50.0, (next_beat - time.monotonic_ns()) / 1e6))
            try:
                events = dict(poller.poll(timeout_ms))
            except zmq.ZMQError:
                break  # context terminated under us
            if self._router in events:
                self._drain_router()
            for monitor in self._monitors:
                if monitor in events:
                    self._drain_monitor(monitor)
            now = time.monotonic_ns()
            if now >= next_beat:
                self._beat(now)
                next_beat = now + self._heartbeat_ns

    def _drain_router(self) -> None:
        assert self._router is not None
        while True:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic_ns()
            if len(frames) != 2:
                self._decoder.rejected["bad_framing"] += 1
                continue
            peer, data = frames
            message = self._decoder(data)
            if message is not None:
                self._handle(peer, message, now)

    def _handle(self, peer: bytes, message: object, now: int) -> None:
        with self._lock:
            if isinstance(message, Hello):
                if message.action_dim != self._action_dim:
                    self._counters["rejected_action_dim"] += 1
                    log.error("controller expects %d action values, this policy sends %d; refusing it",
                              message.action_dim, self._action_dim)
                    return
                if message.instance != self._instance:
                    self._counters["controller_hello"] += 1
                self._peer, self._instance = peer, message.instance
                self._ready.clear()  # a (re)starting controller must finish the handshake again
                self._last_rx_ns = now
                timing = {}
                if message.v >= 2:  # the timing the controller must use (docs/wire.md §4)
                    timing = dict(heartbeat_ms=self._settings.heartbeat_ms,
                                  stale_after_ms=self._settings.stale_after_ms,
                                  command_ttl_ms=self._settings.command_ttl_ms)
                welcome = Welcome(
                    v=min(message.v, 2), session=self._session, instance=message.instance,
                    action_dim=self._action_dim, echo_t_ns=message.t_sent_ns, echo_recv_ns=now,
                    t_sent_ns=time.monotonic_ns(), **timing,
                )
                self._send_session(encode(welcome))
                self._send_hold_locked("handshake")
                return
            session = getattr(message, "session", None)
            instance = getattr(message, "instance", None)
            if session != self._session or instance != self._instance:
                # An old controller instance or one that knows a previous daemon: tell it who we are so it
                # starts over with Hello.
                self._counters["rejected_wrong_session"] += 1
                if instance is not None:
                    self._send_heartbeat_locked(instance, time.monotonic_ns(), peer)
                return
            self._peer = peer
            self._last_rx_ns = now
            if isinstance(message, Ready) or (isinstance(message, Heartbeat) and message.ready):
                if not self._ready.is_set():
                    self._counters["controller_ready"] += 1
                    self._ready.set()
            if isinstance(message, Heartbeat):
                self._peer_heartbeat = (message.t_sent_ns, now)
                self._counters["rx_heartbeat"] += 1
                if message.echo_t_ns:
                    round_trip = (now - message.echo_t_ns) - (message.t_sent_ns - message.echo_recv_ns)
                    if 0 <= round_trip <= now - message.echo_t_ns:
                        self._round_trips.append(round_trip)
            elif isinstance(message, StateReport):
                if len(message.actual) != self._action_dim:
                    self._counters["rejected_state_dim"] += 1
                    self._log_refusal("state_dim", "controller reports %d measured values, the action has %d; "
                                      "state reports ignored (docs/wire.md §3)", len(message.actual), self._action_dim)
                    return
                self._state = message
                self._state_rx_ns = now
                applied = message.seq_applied
                if applied >= 0 and (not self._applied or self._applied[-1].seq != applied):
                    given = tuple(message.applied) if message.applied else None
                    self._applied.append(AppliedCommand(applied, tuple(message.actual), given, now))
                self._counters["rx_state"] += 1

    def _log_refusal(self, key: str, message: str, *args: object) -> None:
        """One warning per kind of refusal per 10 s (a misconfigured controller retries every 100 ms)."""
        now = time.monotonic_ns()
        if now - self._last_refusal_log.get(key, -(10**12)) >= 10 * 10**9:
            self._last_refusal_log[key] = now
            total = self._counters.get(f"rejected_{key}", 0) or self._counters.get(key, 0)
            log.warning(message + " [%d so far]", *args, total)

    def _beat(self, now: int) -> None:
        with self._lock:
            if not self._ready.is_set():
                self._send_hold_locked("handshake")
            if self._instance is not None:
                self._send_heartbeat_locked(self._instance, now)

    def _send_heartbeat_locked(self, instance: int, now: int, peer: bytes | None = None) -> None:
        echo_t, echo_recv = self._peer_heartbeat
        beat = Heartbeat(
            session=self._session, instance=instance, ready=self._ready.is_set(),
            t_sent_ns=now, echo_t_ns=echo_t, echo_recv_ns=echo_recv,
        )
        self._send_session(encode(beat), peer)
        self._counters["sent_heartbeat"] += 1

    def _send_session(self, data: bytes, peer: bytes | None = None) -> None:
        peer = peer if peer is not None else self._peer
        if self._router is None or peer is None:
            return
        try:
            self._router.send_multipart([peer, data], zmq.NOBLOCK)
        except zmq.ZMQError:
            self._counters["session_send_dropped"] += 1

    def _drain_monitor(self, monitor: zmq.Socket) -> None:
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            name = {
                zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused_auth",
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "refused_protocol",
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "refused_handshake",
            }.get(event["event"])
            if name:
                with self._lock:
                    self._counters[name] += 1
                    self._log_refusal(name, "refused a controller connection on %s: %s (unauthorised CURVE key, "
                                      "no CURVE, or a protocol error; `vla-edge keys authorize` adds a key)",
                                      event.get("endpoint", b"").decode(errors="replace"), name)
