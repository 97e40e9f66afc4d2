"""Controller-side client of the action stream: the library a motor controller (or the simulated arm) runs.

The intended loop, once per control period::

    sp = client.next_setpoint()          # values to actuate, or the held position, and why
    actual = motors.apply(sp.values)
    client.report(actual)                # what the motors really did; the daemon plans from it

It trusts nothing from the daemon: a command is actuated only when it belongs to the current session, its
sequence number is newer than anything seen, it is due (never early), not past its deadline, and its values
pass THIS controller's own limits (finite, inside [low, high], within max_delta of the last actuated position).
Anything else is rejected and counted, and the arm holds its last actuated position. With no valid message
from the daemon for ``stale_after_ms`` it holds with reason ``"stale"``. This is a stale-command watchdog
that requests a controlled hold; it is NOT a safety-rated system and not an emergency stop.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, model_validator

from vla_edge.config import StreamSettings
from vla_edge.keys import CLIENT_NAME, make_curve_client
from vla_edge.wire import (
    DAEMON_HOLD_PREFIX,
    MAX_ACTION_DIM,
    MAX_COUNTERS,
    SESSION_VERSION,
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

DEAD_AFTER_HEARTBEATS = 3
# A command the controller refused for one of these reasons did not run although the daemon meant it to: the
# arm is not where the daemon's plan assumes. The state report names the newest one (seq_rejected), and the
# daemon drops the rest of that chunk and plans again from the measured position (docs/wire.md §6).
REFUSALS = frozenset({"late", "stale", "wrong_dim", "non_finite", "out_of_limits", "over_velocity"})
_CLOCK_WINDOW = 16  # clock samples kept; the one with the shortest round trip wins
# Allowance for the two monotonic clocks running at different rates since the offset sample was taken: crystal
# oscillators are specified to ±50-100 ppm; 200 ppm is 20 µs per 100 ms.
CLOCK_DRIFT_PPM = 200


class ActionLimits(BaseModel):
    """The controller's own limits per action dimension. ``max_delta``: largest change between two actuations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: list[float]
    high: list[float]
    max_delta: list[float]

    @model_validator(mode="after")
    def _consistent(self) -> ActionLimits:
        dims = {len(self.low), len(self.high), len(self.max_delta)}
        if len(dims) != 1 or not 1 <= len(self.low) <= MAX_ACTION_DIM:
            raise ValueError("low, high and max_delta must have the same length (1..64)")
        arrays = np.array([self.low, self.high, self.max_delta], dtype=np.float64)
        if not np.all(np.isfinite(arrays)):
            raise ValueError("limits must be finite numbers")
        if np.any(arrays[0] > arrays[1]):
            raise ValueError("every low must be <= its high")
        if np.any(arrays[2] <= 0):
            raise ValueError("every max_delta must be > 0")
        return self

    @property
    def dim(self) -> int:
        return len(self.low)


def check_action(values: np.ndarray, last: np.ndarray, limits: ActionLimits) -> str | None:
    """Why ``values`` must not reach the motors (a counter name), or None when it may. Never clamps."""
    if values.shape != (limits.dim,):
        return "wrong_dim"
    if not np.all(np.isfinite(values)):
        return "non_finite"
    if np.any(values < np.asarray(limits.low)) or np.any(values > np.asarray(limits.high)):
        return "out_of_limits"
    if np.any(np.abs(values - last) > np.asarray(limits.max_delta)):
        return "over_velocity"
    return None


@dataclass(frozen=True)
class Setpoint:
    """What to actuate this tick. ``holding``: the last actuated position, with ``reason``; ``seq`` -1 then."""

    values: np.ndarray
    holding: bool
    reason: str
    seq: int


class ClockOffset:
    """Daemon clock minus controller clock, NTP-style, keeping the sample with the shortest round trip.

    The estimate is exact only when the link's delay is the same both ways: with one-way delays ``d_out``
    (controller → daemon) and ``d_back`` it is off by ``(d_out - d_back) / 2``, so under asymmetric delay it can be
    wrong by up to half the round trip. The true offset is always within ``offset_ns ± uncertainty_ns``: half the
    round trip of the sample used plus a clock-drift allowance for its age. Deadline checks use the bound, not
    the estimate (docs/wire.md §5).
    """

    def __init__(self) -> None:
        # (round trip, offset, controller time of the sample); the shortest round trip wins
        self._samples: deque[tuple[int, int, int]] = deque(maxlen=_CLOCK_WINDOW)

    def add(self, t1: int, t2: int, t3: int, t4: int) -> None:
        """t1 sent (ours), t2 received (theirs), t3 replied (theirs), t4 received (ours)."""
        round_trip = (t4 - t1) - (t3 - t2)
        if round_trip < 0 or t4 < t1:
            return  # impossible sample (a stale echo): ignore
        self._samples.append((round_trip, ((t2 - t1) + (t3 - t4)) // 2, t4))

    @property
    def known(self) -> bool:
        return bool(self._samples)

    @property
    def offset_ns(self) -> int:
        return min(self._samples)[1] if self._samples else 0

    @property
    def round_trip_ns(self) -> int:
        return min(self._samples)[0] if self._samples else 0

    def uncertainty_ns(self, now_ns: int) -> int:
        """How far the true offset may be from ``offset_ns``: half the best sample's round trip (exact bound for
        any split of the delay between the two directions) plus ``CLOCK_DRIFT_PPM`` of the sample's age."""
        if not self._samples:
            return 0
        round_trip, _, taken = min(self._samples)
        return (round_trip + 1) // 2 + max(0, now_ns - taken) * CLOCK_DRIFT_PPM // 1_000_000

    def to_local(self, due_ns: int, deadline_ns: int, now_ns: int) -> tuple[int, int]:
        """A command's due time and deadline (daemon clock) on this clock, on the safe side of the uncertainty:
        the due time as late and the deadline as early as the true offset could make them."""
        offset, slack = self.offset_ns, self.uncertainty_ns(now_ns)
        return due_ns - offset + slack, deadline_ns - offset - slack


@dataclass
class _Pending:
    seq: int
    command: ActionCommand | Hold
    due_local_ns: int
    deadline_local_ns: int


class ControllerClient:
    """Receives commands from the daemon and turns them into one safe setpoint per control tick."""

    def __init__(
        self,
        settings: StreamSettings,
        limits: ActionLimits,
        initial_position: np.ndarray,
        *,
        keys_dir: Path | None = None,
        client_name: str = CLIENT_NAME,
        on_outcome: Callable[[int, str], None] | None = None,
    ) -> None:
        position = np.asarray(initial_position, dtype=np.float64)
        if position.shape != (limits.dim,):
            raise StreamError(f"initial_position has shape {position.shape}, limits have {limits.dim} values")
        check_security(settings.curve, [settings.command_endpoint, settings.state_endpoint])
        self._settings = settings
        self._limits = limits
        self._keys_dir = Path(keys_dir) if keys_dir is not None else settings.keys_dir
        self._client_name = client_name
        # on_outcome(seq, outcome) is called once per command seen: "executed" or "rejected_<why>"/"superseded".
        self._on_outcome = on_outcome
        self._heartbeat_ns = int(settings.heartbeat_ms * 1e6)
        self._stale_ns = int(settings.stale_after_ms * 1e6)
        self._instance = secrets.randbits(63)
        self._lock = threading.Lock()  # guards everything below that both threads touch
        self._position = position.copy()
        self._seq_applied = -1
        self._seq_rejected = -1
        self._rejected_reason = ""
        self._session: int | None = None
        self._welcomed_at_ns = 0
        self._command_channel_live = False
        self._ready = False
        self._highest_seq = -1
        self._pending: _Pending | None = None
        self._daemon_hold: str = ""
        self._last_daemon_ns: int | None = None
        self._last_setpoint: Setpoint | None = None
        self._peer_heartbeat: tuple[int, int] = (0, 0)
        self._clock = ClockOffset()
        self._counters: Counter[str] = Counter()
        self._command_decoder = Decoder("command")
        self._session_decoder = Decoder("daemon_session")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._sub: zmq.Socket | None = None
        self._dealer: zmq.Socket | None = None
        self._report_in: zmq.Socket | None = None  # I/O thread end of the report pipe
        self._report_out: zmq.Socket | None = None  # control thread end
        self._report_lock = threading.Lock()

    # ---- lifecycle ----

    def start(self) -> None:
        if self._thread is not None:
            raise StreamError("ControllerClient.start() called twice")
        self._ctx = zmq.Context()
        try:
            self._sub = self._ctx.socket(zmq.SUB)
            configure_socket(self._sub, self._settings.heartbeat_ms, receives=True)
            # CONFLATE keeps only the newest command in the socket, so a stall (GC pause, SIGSTOP, slow
            # network) can never release a backlog of old commands: backlog <= 1 by construction.
            self._sub.setsockopt(zmq.CONFLATE, 1)
            self._sub.setsockopt(zmq.RCVHWM, 1)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            self._dealer = self._ctx.socket(zmq.DEALER)
            configure_socket(self._dealer, self._settings.heartbeat_ms, receives=True)
            # IMMEDIATE: never queue a Hello/state for a connection that is not up; drop and resend next beat.
            self._dealer.setsockopt(zmq.IMMEDIATE, 1)
            self._dealer.setsockopt(zmq.SNDHWM, 4)
            self._dealer.setsockopt(zmq.RCVHWM, 16)
            if self._settings.curve:
                make_curve_client(self._sub, self._keys_dir, self._client_name)
                make_curve_client(self._dealer, self._keys_dir, self._client_name)
            self._sub.connect(self._settings.command_endpoint)
            self._dealer.connect(self._settings.state_endpoint)
            pipe = f"inproc://vla-edge-report-{self._instance}"
            self._report_in = self._ctx.socket(zmq.PAIR)
            self._report_in.bind(pipe)
            self._report_out = self._ctx.socket(zmq.PAIR)
            self._report_out.setsockopt(zmq.SNDHWM, 2)
            self._report_out.setsockopt(zmq.LINGER, 0)
            self._report_out.connect(pipe)
        except zmq.ZMQError as exc:
            self.close()
            raise StreamError(f"cannot connect the controller client: {exc.strerror}") from None
        except Exception:
            self.close()
            raise
        self._thread = threading.Thread(target=self._io_loop, name="vla-edge-controller", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for sock in (self._sub, self._dealer, self._report_in, self._report_out):
            if sock is not None:
                sock.close(linger=0)
        self._sub = self._dealer = self._report_in = self._report_out = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> ControllerClient:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- the control loop's calls ----

    def next_setpoint(self, now_ns: int | None = None) -> Setpoint:
        """Decide this tick's setpoint. Call once per control period, then ``report()`` what was actuated."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        outcome: tuple[int, str] | None = None
        with self._lock:
            self._counters["ticks"] += 1
            pending = self._pending
            if not self._ready:
                reason = "handshake"
            elif self._last_daemon_ns is None or now - self._last_daemon_ns > self._stale_ns:
                reason = "stale"
                if pending is not None:
                    self._pending = None
                    outcome = (pending.seq, "rejected_stale")
            elif pending is None:
                reason = self._daemon_hold or "idle"
            elif isinstance(pending.command, Hold):
                self._pending = None
                self._daemon_hold = f"{DAEMON_HOLD_PREFIX}{pending.command.reason}"
                reason = self._daemon_hold
            elif now < pending.due_local_ns:
                reason = "waiting"
            else:
                self._pending = None
                if now > pending.deadline_local_ns:
                    reason = "late"
                    outcome = (pending.seq, "rejected_late")
                else:
                    values = np.asarray(pending.command.values, dtype=np.float64)
                    rejection = check_action(values, self._position, self._limits)
                    if rejection is None:
                        self._position = values
                        self._seq_applied = pending.seq
                        self._daemon_hold = ""
                        outcome = (pending.seq, "executed")
                        self._counters["executed"] += 1
                        setpoint = Setpoint(values=values.copy(), holding=False, reason="", seq=pending.seq)
                        self._last_setpoint = setpoint
                        self._emit(outcome)
                        return setpoint
                    reason = rejection
                    outcome = (pending.seq, f"rejected_{rejection}")
            if outcome is not None:
                self._counters[outcome[1]] += 1
                self._note_refusal_locked(*outcome)
            self._counters[f"hold_{reason.split(':')[0]}"] += 1
            setpoint = Setpoint(values=self._position.copy(), holding=True, reason=reason, seq=-1)
            self._last_setpoint = setpoint
        self._emit(outcome)
        return setpoint

    def report(self, actual: np.ndarray) -> None:
        """Send what the motors actually did this tick, with the command they were given (``applied``, v2).

        The daemon plans from ``actual``; its recorder writes the given command as the dataset's ``action`` (never
        a command this client rejected) and ``actual`` as a feature of its own (docs/wire.md §6)."""
        values = [float(x) for x in np.asarray(actual, dtype=np.float64).reshape(-1)]
        with self._lock:
            if self._session is None or self._last_setpoint is None:
                return
            counters = dict(list(self._counters.items())[:MAX_COUNTERS])
            state = StateReport(
                session=self._session, instance=self._instance, t_sent_ns=time.monotonic_ns(),
                seq_applied=self._seq_applied, actual=values or [0.0],
                holding=self._last_setpoint.holding, hold_reason=self._last_setpoint.reason,
                counters={k[:64]: v for k, v in counters.items()},
                applied=[float(x) for x in self._position] if self._seq_applied >= 0 else [],
                seq_rejected=self._seq_rejected, rejected_reason=self._rejected_reason,
            )
        with self._report_lock:
            if self._report_out is None:
                return
            try:
                self._report_out.send(encode(state), zmq.NOBLOCK)
            except zmq.Again:
                with self._lock:
                    self._counters["report_dropped"] += 1

    def daemon_alive(self) -> bool:
        with self._lock:
            last = self._last_daemon_ns
        return last is not None and time.monotonic_ns() - last < DEAD_AFTER_HEARTBEATS * self._heartbeat_ns

    def ready(self) -> bool:
        with self._lock:
            return self._ready

    @property
    def position(self) -> np.ndarray:
        """The last actuated position (what holding keeps)."""
        with self._lock:
            return self._position.copy()

    @property
    def clock(self) -> ClockOffset:
        return self._clock

    def counters(self) -> dict[str, int]:
        with self._lock:
            merged = Counter(self._counters)
            merged.update({f"rejected_{k}": v for k, v in self._command_decoder.rejected.items()})
            merged.update({f"rejected_session_{k}": v for k, v in self._session_decoder.rejected.items()})
        return dict(merged)

    # ---- I/O thread ----

    def _note_refusal_locked(self, seq: int, outcome: str) -> None:
        why = outcome.removeprefix("rejected_")
        if why in REFUSALS and seq > self._seq_rejected:
            self._seq_rejected, self._rejected_reason = seq, why

    def _emit(self, outcome: tuple[int, str] | None) -> None:
        if outcome is not None and self._on_outcome is not None:
            self._on_outcome(*outcome)

    def _io_loop(self) -> None:
        assert self._sub is not None and self._dealer is not None and self._report_in is not None
        poller = zmq.Poller()
        for sock in (self._sub, self._dealer, self._report_in):
            poller.register(sock, zmq.POLLIN)
        next_beat = time.monotonic_ns()
        while not self._stop.is_set():
            timeout_ms = max(0.0, min(50.0, (next_beat - time.monotonic_ns()) / 1e6))
            try:
                events = dict(poller.poll(timeout_ms))
            except zmq.ZMQError:
                break
            if self._sub in events:
                self._drain(self._sub, self._on_command_bytes)
            if self._dealer in events:
                self._drain(self._dealer, self._on_session_bytes)
            if self._report_in in events:
                self._drain(self._report_in, self._forward_report)
            now = time.monotonic_ns()
            if now >= next_beat:
                self._beat(now)
                next_beat = now + self._heartbeat_ns

    @staticmethod
    def _drain(sock: zmq.Socket, handle: Callable[[bytes, int], None]) -> None:
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            handle(data, time.monotonic_ns())

    def _forward_report(self, data: bytes, now: int) -> None:
        self._send_session(data)

    def _send_session(self, data: bytes) -> None:
        assert self._dealer is not None
        try:
            self._dealer.send(data, zmq.NOBLOCK)
        except zmq.Again:
            with self._lock:
                self._counters["session_send_dropped"] += 1

    def _beat(self, now: int) -> None:
        with self._lock:
            session = self._session
            ready = self._ready
            echo_t, echo_recv = self._peer_heartbeat
        if session is None:
            message = Hello(v=SESSION_VERSION, instance=self._instance, action_dim=self._limits.dim, t_sent_ns=now)
        else:
            message = Heartbeat(
                session=session, instance=self._instance, ready=ready, t_sent_ns=now,
                echo_t_ns=echo_t, echo_recv_ns=echo_recv,
            )
        self._send_session(encode(message))

    def _on_session_bytes(self, data: bytes, now: int) -> None:
        message = self._session_decoder(data)
        if message is None:
            return
        say_ready_again = False
        with self._lock:
            if isinstance(message, Welcome):
                self._on_welcome(message, now)
            elif isinstance(message, Heartbeat) and message.instance == self._instance:
                if message.session != self._session:
                    # A daemon we have no session with (it restarted): start over with Hello.
                    self._reset_session("new_daemon")
                    return
                self._last_daemon_ns = now
                self._peer_heartbeat = (message.t_sent_ns, now)
                if message.echo_t_ns:
                    self._clock.add(message.echo_t_ns, message.echo_recv_ns, message.t_sent_ns, now)
                # The daemon lost our Ready (or restarted its handshake): say it again.
                say_ready_again = self._ready and not message.ready
            else:
                self._counters["rejected_session_foreign"] += 1
        if say_ready_again:
            self._send_ready(now)

    def _on_welcome(self, welcome: Welcome, now: int) -> None:
        if welcome.instance != self._instance:
            self._counters["rejected_session_foreign"] += 1
            return
        if welcome.action_dim != self._limits.dim:
            self._counters["rejected_action_dim"] += 1
            log.error("daemon sends %d action values, this controller has limits for %d; not accepting it",
                      welcome.action_dim, self._limits.dim)
            return
        if welcome.v >= 2:
            # The daemon's timing is the one to use: it decides when commands go stale and how often it beats.
            assert welcome.heartbeat_ms is not None and welcome.stale_after_ms is not None
            self._heartbeat_ns = int(welcome.heartbeat_ms * 1e6)
            self._stale_ns = int(welcome.stale_after_ms * 1e6)
        if welcome.session != self._session:
            self._session = welcome.session
            self._ready = False
            self._command_channel_live = False
            self._highest_seq = -1
            self._seq_applied = self._seq_rejected = -1  # sequence numbers of another session mean nothing here
            self._rejected_reason = ""
            self._drop_pending_locked("rejected_new_session")
            self._counters["sessions"] += 1
        self._last_daemon_ns = now
        self._clock.add(welcome.echo_t_ns, welcome.echo_recv_ns, welcome.t_sent_ns, now)

    def _reset_session(self, why: str) -> None:
        self._session = None
        self._ready = False
        self._command_channel_live = False
        self._counters[f"session_reset_{why}"] += 1
        self._drop_pending_locked("rejected_new_session")

    def _drop_pending_locked(self, outcome: str) -> None:
        if self._pending is not None and self._on_outcome is not None and isinstance(self._pending.command,
                                                                                      ActionCommand):
            self._on_outcome(self._pending.seq, outcome)
        self._pending = None

    def _send_ready(self, now: int) -> None:
        with self._lock:
            if self._session is None:
                return
            message = Ready(session=self._session, instance=self._instance, t_sent_ns=now)
        self._send_session(encode(message))

    def _on_command_bytes(self, data: bytes, now: int) -> None:
        message = self._command_decoder(data)
        if message is None:
            return
        outcomes: list[tuple[int, str]] = []
        became_ready = False
        with self._lock:
            assert isinstance(message, (ActionCommand, Hold))
            self._counters["rx_action" if isinstance(message, ActionCommand) else "rx_hold"] += 1
            if self._session is None or message.session != self._session:
                # Before the Welcome every message is "wrong session": the daemon's handshake Holds land here.
                self._counters["rejected_wrong_session"] += 1
                if isinstance(message, ActionCommand):
                    outcomes.append((message.seq, "rejected_wrong_session"))
            elif not self._ready:
                # Any message of our session proves the subscription is live (the slow-joiner trap is over).
                self._last_daemon_ns = now
                self._command_channel_live = True
                self._ready = became_ready = True
                self._highest_seq = max(self._highest_seq, message.seq)
                if isinstance(message, ActionCommand):
                    self._counters["rejected_not_ready"] += 1
                    outcomes.append((message.seq, "rejected_not_ready"))
            elif message.seq <= self._highest_seq:
                why = "rejected_duplicate" if message.seq == self._highest_seq else "rejected_out_of_order"
                self._counters[why] += 1
                if isinstance(message, ActionCommand):
                    outcomes.append((message.seq, why))
            else:
                self._highest_seq = message.seq
                self._last_daemon_ns = now
                if isinstance(message, ActionCommand) and len(message.values) != self._limits.dim:
                    self._counters["rejected_wrong_dim"] += 1
                    outcomes.append((message.seq, "rejected_wrong_dim"))
                    self._note_refusal_locked(message.seq, "rejected_wrong_dim")
                else:
                    due = deadline = now
                    if isinstance(message, ActionCommand):
                        due, deadline = self._clock.to_local(message.t_due_ns, message.deadline_ns, now)
                    if isinstance(message, ActionCommand) and now > deadline:
                        self._counters["rejected_late"] += 1
                        outcomes.append((message.seq, "rejected_late"))
                        self._note_refusal_locked(message.seq, "rejected_late")
                    else:
                        if self._pending is not None and isinstance(self._pending.command, ActionCommand):
                            self._counters["superseded"] += 1
                            outcomes.append((self._pending.seq, "superseded"))
                        self._pending = _Pending(message.seq, message, due, deadline)
        if became_ready:
            self._send_ready(now)
        if self._on_outcome is not None:
            for outcome in outcomes:
                self._on_outcome(*outcome)
