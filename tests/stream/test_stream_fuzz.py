"""Bad bytes: the decoder survives fuzzing (0 crashes, 0 hangs) and live sockets keep working under garbage."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.fault_proxy import FaultProxy, Faults
from vla_edge.controller import ControllerClient
from vla_edge.stream import ActionStream
from vla_edge.wire import (
    MAX_MESSAGE_BYTES,
    ActionCommand,
    Decoder,
    Heartbeat,
    StateReport,
    WireError,
    decode,
    encode,
)

CHANNELS = ["command", "daemon_session", "controller"]
SLOWEST_DECODE_S = [0.0]
FIELDS = ["v", "kind", "session", "seq", "t_sent_ns", "t_due_ns", "deadline_ns", "values", "reason", "instance",
          "action_dim", "ready", "echo_t_ns", "echo_recv_ns", "seq_applied", "actual", "holding", "hold_reason",
          "counters", "applied", "seq_rejected", "rejected_reason", "heartbeat_ms", "stale_after_ms",
          "command_ttl_ms"]
KINDS = ["action", "hold", "hello", "welcome", "ready", "heartbeat", "state", "nope", ""]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64) + 1, max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.binary(max_size=40),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8),
                                                                                        inner, max_size=4),
                      max_leaves=20)


def _decode_timed(data: bytes, channel: str) -> None:
    start = time.perf_counter()
    try:
        message = decode(data, channel)  # type: ignore[arg-type]
        assert message.v in (1, 2)
    except WireError as exc:
        assert exc.reason in {"too_large", "not_msgpack", "not_a_map", "bad_version", "unexpected_kind",
                              "bad_schema"}
    SLOWEST_DECODE_S[0] = max(SLOWEST_DECODE_S[0], time.perf_counter() - start)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=MAX_MESSAGE_BYTES + 64), st.sampled_from(CHANNELS))
def test_arbitrary_bytes_never_crash_the_decoder(data, channel):
    _decode_timed(data, channel)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), values, max_size=12),
       st.sampled_from(KINDS), st.sampled_from([1, 1, 1, 2, "1", True, None]), st.sampled_from(CHANNELS))
def test_wrong_but_well_formed_maps_are_rejected_cleanly(fields, kind, version, channel):
    fields = {"v": version, "kind": kind, **fields} if fields.get("kind") is None else fields
    try:
        data = msgpack.packb(fields, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    _decode_timed(data, channel)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
def test_mutated_valid_messages(position, patch):
    valid = encode(ActionCommand(session=1, seq=5, t_sent_ns=1, t_due_ns=2, deadline_ns=3, values=[0.1, 0.2]))
    i = position % len(valid)
    _decode_timed(valid[:i] + patch + valid[i + len(patch):], "command")


def test_hostile_shapes_are_rejected_by_reason():
    cases = {
        b"\xdd\xff\xff\xff\xff": "not_msgpack",  # array32 claiming 4 G entries: msgpack's length cap
        b"\xdf\xff\xff\xff\xff": "not_msgpack",  # map32 claiming 4 G pairs
        b"\xdb\xff\xff\xff\xff": "not_msgpack",  # str32 claiming 4 GB
        b"\x91" * 100_000: "too_large",  # nesting bomb beyond the size cap
        b"\x91" * 5000: "not_msgpack",  # nesting bomb inside it
        b"\x81\x01\x02": "not_msgpack",  # int map key (strict_map_key)
        msgpack.packb({"v": 1, "kind": "action", "session": 1, "seq": 1, "t_sent_ns": 1, "t_due_ns": 1,
                       "deadline_ns": 1, "values": [0.0] * 65}): "not_msgpack",  # over max_array_len
        msgpack.packb({"v": 1, "kind": "action", "session": 1, "seq": 1, "t_sent_ns": 1, "t_due_ns": 1,
                       "deadline_ns": 1, "values": [0.0], "extra": 1}): "bad_schema",
        msgpack.packb({"v": 1, "kind": "action", "session": 1, "seq": "1", "t_sent_ns": 1, "t_due_ns": 1,
                       "deadline_ns": 1, "values": [0.0]}): "bad_schema",
        msgpack.packb({"v": 2, "kind": "action"}): "bad_version",
        msgpack.packb({"v": 1, "kind": "state"}): "unexpected_kind",  # controller message on the command channel
        msgpack.packb([1, 2]): "not_a_map",
    }
    decoder = Decoder("command")
    for data, reason in cases.items():
        start = time.perf_counter()
        assert decoder(data) is None
        assert time.perf_counter() - start < 0.5
        assert decoder.rejected[reason] >= 1, (data[:16], reason, decoder.rejected)
    assert sum(decoder.rejected.values()) == len(cases)
    # a valid message round-trips byte-exactly
    report = StateReport(v=1, session=1, instance=2, t_sent_ns=3, seq_applied=-1, actual=[0.5], holding=True,
                         hold_reason="stale", counters={"executed": 0})
    assert encode(decode(encode(report), "controller")) == encode(report)
    report2 = StateReport(session=1, instance=2, t_sent_ns=3, seq_applied=7, actual=[0.5], holding=False,
                          hold_reason="", counters={}, applied=[0.25], seq_rejected=6, rejected_reason="late")
    assert report2.v == 2 and encode(decode(encode(report2), "controller")) == encode(report2)


def test_fuzz_figures():
    """A seeded batch of random and mutated frames: counts every rejection, reports the slowest decode."""
    rng = np.random.default_rng(5)
    valid = encode(Heartbeat(session=1, instance=2, ready=True, t_sent_ns=3, echo_t_ns=4, echo_recv_ns=5))
    frames = [bytes(rng.integers(0, 256, rng.integers(0, 2048), dtype=np.uint8)) for _ in range(2000)]
    for _ in range(2000):
        mutated = bytearray(valid)
        mutated[rng.integers(len(mutated))] = rng.integers(256)
        frames.append(bytes(mutated))
    decoder = Decoder("controller")
    slowest = 0.0
    for frame in frames:
        start = time.perf_counter()
        decoder(frame)
        slowest = max(slowest, time.perf_counter() - start)
    slowest = max(slowest, SLOWEST_DECODE_S[0])
    print(f"\nfuzz batch: {len(frames)} frames, accepted {decoder.accepted}, rejected "
          f"{sum(decoder.rejected.values())} {dict(decoder.rejected)}; 0 crashes; slowest decode "
          f"{slowest * 1e3:.2f} ms (messages capped at {MAX_MESSAGE_BYTES} bytes)")
    assert decoder.accepted + sum(decoder.rejected.values()) == len(frames)
    assert decoder.accepted > 0 and sum(decoder.rejected.values()) > 2000
    assert slowest < 0.5


@pytest.mark.slow
def test_live_garbage_on_both_channels(demo_settings, endpoint, limits, start_position, wait):
    """Garbage frames at a running controller (command channel) and a running daemon (session channel)."""
    rng = np.random.default_rng(11)
    garbage = [bytes(rng.integers(0, 256, rng.integers(0, 300), dtype=np.uint8)) for _ in range(150)]
    garbage += [b"\x91" * 5000, b"\xdd\xff\xff\xff\xff", msgpack.packb({"v": 1, "kind": "hold"})]
    oversized = b"\x00" * (MAX_MESSAGE_BYTES + 1)
    controller_settings = demo_settings.model_copy(update={"command_endpoint": endpoint()})
    with ActionStream(demo_settings, action_dim=4) as daemon, FaultProxy(
        demo_settings.command_endpoint, controller_settings.command_endpoint, Faults()
    ) as proxy, ControllerClient(controller_settings, limits, start_position) as client:
        assert daemon.wait_for_controller(10.0) and wait(client.ready, 2.0)
        rejected_before = {k: v for k, v in client.counters().items() if k.startswith("rejected_")}
        # session channel: a raw DEALER throwing garbage at the daemon's ROUTER (no conflation: exact counts)
        ctx = zmq.Context.instance()
        rogue = ctx.socket(zmq.DEALER)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.connect(demo_settings.state_endpoint)
        time.sleep(0.2)
        daemon_before = sum(v for k, v in daemon.counters().items() if k.startswith("rejected_"))
        for frame in garbage:
            rogue.send(frame)
            proxy.inject(frame)
            time.sleep(0.004)  # the command SUB conflates; spacing lets each frame be read and judged
        rogue.send(oversized)  # libzmq drops it (MAXMSGSIZE) and the connection; the daemon never sees it
        rogue.close()
        assert wait(lambda: sum(v for k, v in daemon.counters().items() if k.startswith("rejected_"))
                    - daemon_before >= len(garbage), 3.0), daemon.counters()
        # still working afterwards: a command is executed and state comes back
        time.sleep(0.1)
        seq = daemon.send_action(client.position + np.array([0.05, 0, 0, 0]), time.monotonic_ns())
        assert wait(lambda: not client.next_setpoint().holding, 2.0)
        assert wait(lambda: client.report(client.position) or (daemon.latest_state() is not None
                    and daemon.latest_state().seq_applied == seq), 2.0)
        controller_rejected = sum(v - rejected_before.get(k, 0) for k, v in client.counters().items()
                                  if k.startswith("rejected_"))
        daemon_rejected = sum(v for k, v in daemon.counters().items() if k.startswith("rejected_")) - daemon_before
    print(f"\nlive garbage: {len(garbage)} frames + 1 oversized to each side; daemon counted {daemon_rejected} "
          f"rejections, controller counted {controller_rejected}; both still working")
    assert daemon_rejected == len(garbage)
    assert controller_rejected >= 0.9 * len(garbage)
