"""Wire schemas and the msgpack codec shared by the daemon and the motor controller (see docs/wire.md).

Every message is one ZeroMQ frame holding one msgpack map with a version ``v`` and a ``kind``. Decoding is
defensive in a fixed order: size cap → msgpack with length caps → map with known ``v``/``kind`` → strict
pydantic validation. Nothing here checks that floats are finite: the controller's filter does that, so a bad
value is rejected (and counted), never silently repaired.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Annotated, ClassVar, Literal

import msgpack
import zmq
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from vla_edge.errors import VlaEdgeError

WIRE_VERSION = 1  # the version of the messages that did not change (action, hold, ready, heartbeat)
# hello, welcome and state exist in version 1 and 2 (docs/wire.md §3): a controller says 2 in its hello to get a
# version-2 welcome (the timing it must use) and sends version-2 state (what was actuated and what was refused).
SESSION_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MAX_MESSAGE_BYTES = 16 * 1024  # also ZMQ_MAXMSGSIZE on every receiving socket
MAX_ACTION_DIM = 64
MAX_REASON_CHARS = 64
DAEMON_HOLD_PREFIX = "daemon:"  # a controller holding on the daemon's request reports "daemon:<its reason>"
MAX_HOLD_REASON_CHARS = MAX_REASON_CHARS + len(DAEMON_HOLD_PREFIX)
MAX_COUNTERS = 64
ZMTP_TIMEOUT_MS = 1000

# Hard caps handed to msgpack so a hostile length prefix cannot make it allocate.
_UNPACK_LIMITS = dict(
    max_str_len=1024,
    max_bin_len=0,  # no message uses bin
    max_array_len=MAX_ACTION_DIM,
    max_map_len=MAX_COUNTERS,
    max_ext_len=0,  # no message uses ext (and so no timestamp ext either)
)

Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]
UInt63 = Annotated[int, Field(ge=0, lt=2**63)]
Seq = Annotated[int, Field(ge=0, lt=2**63)]
Reason = Annotated[str, Field(max_length=MAX_REASON_CHARS)]
HoldReason = Annotated[str, Field(max_length=MAX_HOLD_REASON_CHARS)]
Millis = Annotated[float, Field(gt=0, le=3_600_000)]
Values = Annotated[list[float], Field(min_length=1, max_length=MAX_ACTION_DIM)]


class StreamError(VlaEdgeError):
    """The action stream cannot start or was used wrongly (bad endpoint, missing keys, wrong action size)."""


DECODE_REASONS = frozenset({"too_large", "not_msgpack", "not_a_map", "bad_version", "unexpected_kind", "bad_schema"})


class WireError(Exception):
    """A received message was rejected; ``reason`` is the counter name it is recorded under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class WireMessage(BaseModel):
    # strict: an int field never accepts "3" or 3.0; extra="forbid": unknown keys are errors, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: Literal[1] = WIRE_VERSION


# ---- daemon → controller, on the command channel (PUB → conflating SUB) ----


class ActionCommand(WireMessage):
    """Actuate ``values`` at ``t_due_ns``; never after ``deadline_ns``. Times are the daemon's monotonic clock."""

    kind: Literal["action"] = "action"
    session: UInt63
    seq: Seq
    t_sent_ns: Int64
    t_due_ns: Int64
    deadline_ns: Int64
    values: Values


class Hold(WireMessage):
    """Keep the last actuated position until a newer command. Also sent while waiting for the handshake."""

    kind: Literal["hold"] = "hold"
    session: UInt63
    seq: Seq
    t_sent_ns: Int64
    reason: Reason


# ---- session channel (controller DEALER ⇄ daemon ROUTER) ----


class _Versioned(WireMessage):
    """A message with a version-2 form: ``v`` is 1 or 2; the version-2 fields are present exactly when v is 2."""

    v: Literal[1, 2] = SESSION_VERSION
    V2_FIELDS: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _fields_match_version(self) -> _Versioned:
        present = [name for name in self.V2_FIELDS if getattr(self, name) is not None]
        if self.v == 1 and present:
            raise ValueError(f"version 1 has no {', '.join(present)}")
        if self.v == 2 and len(present) != len(self.V2_FIELDS):
            raise ValueError(f"version 2 needs {', '.join(n for n in self.V2_FIELDS if n not in present)}")
        return self


class Hello(_Versioned):
    """Controller → daemon, repeated every heartbeat until a Welcome arrives. ``t_sent_ns``: controller clock.
    ``v``: the highest session version the controller speaks; the Welcome answers in the same version."""

    kind: Literal["hello"] = "hello"
    instance: UInt63
    action_dim: Annotated[int, Field(ge=1, le=MAX_ACTION_DIM)]
    t_sent_ns: Int64


class Welcome(_Versioned):
    """Daemon → controller: the session to accept commands from, and the first clock sample (NTP-style).

    Version 2 also carries the timing the controller must use: the daemon's heartbeat period, after how long
    without a valid message it must hold (``stale_after_ms``) and the commands' time to live."""

    V2_FIELDS = ("heartbeat_ms", "stale_after_ms", "command_ttl_ms")

    kind: Literal["welcome"] = "welcome"
    session: UInt63
    instance: UInt63
    action_dim: Annotated[int, Field(ge=1, le=MAX_ACTION_DIM)]
    echo_t_ns: Int64  # the Hello's t_sent_ns (controller clock)
    echo_recv_ns: Int64  # when the daemon received that Hello (daemon clock)
    t_sent_ns: Int64  # daemon clock
    heartbeat_ms: Millis | None = None
    stale_after_ms: Millis | None = None
    command_ttl_ms: Millis | None = None


class Ready(WireMessage):
    """Controller → daemon: the handshake is done and a message arrived on the command channel."""

    kind: Literal["ready"] = "ready"
    session: UInt63
    instance: UInt63
    t_sent_ns: Int64


class Heartbeat(WireMessage):
    """Both ways. Echoes the peer's last heartbeat so either side can estimate round trip and clock offset."""

    kind: Literal["heartbeat"] = "heartbeat"
    session: UInt63
    instance: UInt63
    ready: bool
    t_sent_ns: Int64
    echo_t_ns: Int64  # the peer's last heartbeat t_sent_ns (peer clock), 0 when none yet
    echo_recv_ns: Int64  # when that heartbeat arrived (sender clock), 0 when none yet


class StateReport(_Versioned):
    """Controller → daemon: what the motors actually did this tick, and which command they were given.

    The daemon's recorder writes the command the controller actuated (``seq_applied`` / ``applied``) as the
    dataset's ``action``, never the one it merely sent, and ``actual`` as a feature of its own.

    ``actual``: the measured position, one value per action dimension, in the action's units and order (the
    daemon refuses a report of another length). Version 2 adds what the motors were *given*: ``applied``, the
    values of command ``seq_applied`` as actuated after the controller's filter (empty before the first), and
    the newest command the controller refused, ``seq_rejected`` (-1: none yet) with ``rejected_reason``."""

    V2_FIELDS = ("applied", "seq_rejected", "rejected_reason")

    kind: Literal["state"] = "state"
    session: UInt63
    instance: UInt63
    t_sent_ns: Int64
    seq_applied: Annotated[int, Field(ge=-1, lt=2**63)]  # -1: nothing actuated yet
    actual: Values
    holding: bool
    hold_reason: HoldReason
    counters: Annotated[dict[Annotated[str, Field(max_length=MAX_REASON_CHARS)], UInt63], Field(max_length=MAX_COUNTERS)]
    applied: Annotated[list[float], Field(max_length=MAX_ACTION_DIM)] | None = None
    seq_rejected: Annotated[int, Field(ge=-1, lt=2**63)] | None = None
    rejected_reason: Reason | None = None


DaemonCommand = Annotated[ActionCommand | Hold, Field(discriminator="kind")]
DaemonSession = Annotated[Welcome | Heartbeat, Field(discriminator="kind")]
ControllerMessage = Annotated[Hello | Ready | Heartbeat | StateReport, Field(discriminator="kind")]

_KINDS: dict[str, set[str]] = {
    "command": {"action", "hold"},
    "daemon_session": {"welcome", "heartbeat"},
    "controller": {"hello", "ready", "heartbeat", "state"},
}
_VERSIONS: dict[str, tuple[int, ...]] = {"hello": (1, 2), "welcome": (1, 2), "state": (1, 2)}
_ADAPTERS: dict[str, TypeAdapter] = {
    "command": TypeAdapter(DaemonCommand),
    "daemon_session": TypeAdapter(DaemonSession),
    "controller": TypeAdapter(ControllerMessage),
}


def encode(message: WireMessage) -> bytes:
    """One msgpack map, keys in field order (so bytes are reproducible); floats as float 64."""
    payload = message.model_dump(mode="python", exclude_none=True)  # None: a field of a later version
    data = msgpack.packb(payload, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise StreamError(f"{message.kind} message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES}-byte cap")
    return data


def decode(data: bytes, channel: Literal["command", "daemon_session", "controller"]) -> WireMessage:
    """Bytes → a validated message allowed on ``channel``. Raises ``WireError`` (never anything else)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError("too_large", f"{len(data)} bytes")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, FormatError, StackError...)
        raise WireError("not_msgpack", type(exc).__name__) from None
    if not isinstance(obj, dict):
        raise WireError("not_a_map", type(obj).__name__)
    if obj.get("v") not in SUPPORTED_VERSIONS or isinstance(obj.get("v"), bool):
        raise WireError("bad_version", repr(obj.get("v"))[:32])
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS[channel]:
        raise WireError("unexpected_kind", repr(kind)[:32])
    if obj["v"] not in _VERSIONS.get(kind, (WIRE_VERSION,)):
        raise WireError("bad_version", f"{kind} v{obj['v']}")
    try:
        return _ADAPTERS[channel].validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WireError("bad_schema", f"{where}: {first['type']}") from None
    except Exception as exc:  # defensive: validation must never take the receive loop down
        raise WireError("bad_schema", type(exc).__name__) from None


class Decoder:
    """Decodes one channel's frames and counts every rejection by reason."""

    def __init__(self, channel: Literal["command", "daemon_session", "controller"]) -> None:
        self.channel = channel
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def __call__(self, data: bytes) -> WireMessage | None:
        try:
            message = decode(data, self.channel)
        except WireError as exc:
            self.rejected[exc.reason] += 1
            return None
        self.accepted += 1
        return message


# ---- transport: endpoints and socket options (part of the contract, so both ends share them) ----

_LOOPBACK_HOSTS = {"localhost", "::1", "[::1]"}


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address (127.0.0.0/8, ::1, localhost)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0] if not rest.startswith("[") else rest[: rest.index("]") + 1]
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_security(curve: bool, endpoints: list[str]) -> None:
    """CURVE may be off only when every endpoint is on this machine (the demo)."""
    if curve:
        return
    remote = [e for e in endpoints if not is_loopback(e)]
    if remote:
        raise StreamError(
            f"stream.curve = false is only allowed on loopback endpoints, but {', '.join(remote)} is not; "
            "make keys with `vla-edge keys generate --dir DIR` and set stream.curve = true"
        )


def configure_socket(sock: zmq.Socket, heartbeat_ms: float, *, receives: bool) -> None:
    """Options every stream socket gets: no linger at close, dead-connection detection, an inbound size cap."""
    hb = max(1, int(heartbeat_ms))
    sock.setsockopt(zmq.LINGER, 0)  # close never waits to flush stale commands
    # A half-open TCP connection to a dead or frozen peer is dropped, so nothing queues for it and its reconnect
    # starts clean. Liveness itself is decided by the application heartbeats, within 3 intervals (docs/wire.md);
    # this only cleans up the transport, leniently (a connection torn down by a scheduling hiccup loses every
    # message until it is back).
    if receives:
        # Not ZMTP heartbeats on a socket that receives: when its inbound pipe is full (a stalled reader; the
        # controller's SUB holds one message by design) libzmq 4.3 stops reading and marks the connection
        # failed, and the next heartbeat timer then aborts the whole process (assertion "!_io_error",
        # stream_engine_base.cpp; libzmq issues 3937, 4364, 4767). Seen here: a controller SIGSTOPped for 1 s
        # died on SIGCONT in 4 runs of 6. The kernel's TCP keepalive does the same clean-up without that path.
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, max(1, ZMTP_TIMEOUT_MS // 1000))
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    else:
        sock.setsockopt(zmq.HEARTBEAT_IVL, hb)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(ZMTP_TIMEOUT_MS, 10 * hb))
        sock.setsockopt(zmq.HEARTBEAT_TTL, max(ZMTP_TIMEOUT_MS, 10 * hb))
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    if receives:
        # A larger message is dropped by libzmq (connection closed) before Python ever sees it.
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
