"""SimSource over a real ZeroMQ PUB/SUB pair with hil's FramePublisher: newest only, never twice, never stale,
stalls reported and recovered."""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest

from hil.camera_publisher import FramePublisher
from vla_edge.camera import (
    CameraError,
    CameraStatus,
    FrameMessage,
    FrameMessageError,
    FrameSource,
    SimSource,
    decode_frame_message,
    encode_frame_message,
    open_source,
)
from tests.waiting import GENEROUS_S, wait_for
from vla_edge.config import CameraSettings


def _image(value: int, height: int = 96, width: int = 96) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = value % 256
    image[..., 1] = 7
    return image


@pytest.fixture
def publisher():
    pub = FramePublisher("tcp://127.0.0.1:*")
    yield pub
    pub.close()


def _settings(endpoint: str, **overrides) -> CameraSettings:
    return CameraSettings(source="sim", sim_endpoint=endpoint, **overrides)


def _publish_until_received(pub: FramePublisher, source: FrameSource, value: int, timeout_s: float = GENEROUS_S):
    """PUB/SUB has a slow-joiner window; keep publishing fresh frames until one comes through."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.publish(_image(value), time.monotonic_ns())
        frame = source.wait_latest(0.05)
        if frame is not None:
            return frame
    raise AssertionError("no frame came through")


def test_open_source_picks_sim_and_delivers_rgb_frames(publisher):
    source = open_source(_settings(publisher.bound_endpoint, width=48, height=32))
    assert isinstance(source, SimSource)
    assert isinstance(source, FrameSource)
    with source:
        assert source.status is CameraStatus.STARTING
        frame = _publish_until_received(publisher, source, value=200)
        assert source.status is CameraStatus.OK
    assert frame.image.shape == (32, 48, 3) and frame.image.dtype == np.uint8
    # Resized from a uniform image, so every pixel keeps its channel values: R=200, G=7, B=0.
    assert (frame.image[..., 0] == 200).all() and (frame.image[..., 1] == 7).all() and (frame.image[..., 2] == 0).all()
    assert source.status is CameraStatus.CLOSED


def test_same_frame_is_never_handed_out_twice(publisher):
    with open_source(_settings(publisher.bound_endpoint)) as source:
        first = _publish_until_received(publisher, source, value=1)
        assert source.latest() is None
        assert source.wait_latest(0.2) is None
        publisher.publish(_image(2), time.monotonic_ns())
        second = source.wait_latest(GENEROUS_S)
        assert second is not None and second.seq > first.seq and second.image[0, 0, 0] == 2
        assert source.latest() is None
        assert source.counters()["delivered"] == 2


def test_newest_wins_when_the_reader_is_slow(publisher):
    with open_source(_settings(publisher.bound_endpoint)) as source:
        _publish_until_received(publisher, source, value=0)
        for value in range(1, 30):
            publisher.publish(_image(value), time.monotonic_ns())
        # wait until the grabber has put frame 29 in the slot (peeking, so nothing is taken before)
        wait_for(lambda: source._frame is not None and source._frame.image[0, 0, 0] == 29, what="frame 29")
        frame = source.latest(max_age_ms=10_000)
        assert frame is not None and frame.image[0, 0, 0] == 29
        assert source.latest() is None


def test_frame_older_than_max_age_is_refused(publisher):
    with open_source(_settings(publisher.bound_endpoint, max_frame_age_ms=100)) as source:
        # Each frame was captured 500 ms before it is sent: new, but refused, however long the caller waits.
        deadline = time.monotonic() + GENEROUS_S
        while source.counters()["frames"] == 0 and time.monotonic() < deadline:
            publisher.publish(_image(1), time.monotonic_ns() - 500_000_000)
            assert source.wait_latest(0.05) is None
        assert source.wait_latest(0.1) is None
        rejected = source.counters()["stale_rejected"]
        assert rejected >= 1 and source.counters()["delivered"] == 0
        # Fresh when it arrives, stale by the time the caller asks with a tighter limit.
        frames_before = source.counters()["frames"]
        publisher.publish(_image(2), time.monotonic_ns())
        wait_for(lambda: source.counters()["frames"] > frames_before, what="frame 2 to arrive")
        time.sleep(0.05)  # not a wait for an effect: the frame must get older than the 10 ms asked for below
        assert source.latest(max_age_ms=10) is None
        assert source.counters()["stale_rejected"] == rejected + 1
        # The refused frame stays refused: a looser limit later does not resurrect it.
        assert source.latest(max_age_ms=10_000) is None


def test_stalled_publisher_is_reported_and_recovers(publisher):
    stall_ms = 300
    with open_source(_settings(publisher.bound_endpoint, stall_timeout_ms=stall_ms)) as source:
        _publish_until_received(publisher, source, value=0)
        frames_before = source.counters()["frames"]
        published = time.monotonic()  # frame 1 arrives after this, so a stall cannot be due before + stall_ms
        publisher.publish(_image(1), time.monotonic_ns())
        wait_for(lambda: source.counters()["frames"] > frames_before, what="frame 1 to arrive")
        # Nobody takes frame 1; then the publisher goes silent. The old frame must never come back.
        wait_for(lambda: source.status is CameraStatus.STALLED, what="the stall to be reported")
        assert time.monotonic() - published >= stall_ms / 1000  # never before stall_timeout_ms of silence
        assert source.latest(max_age_ms=60_000) is None
        assert source.wait_latest(0.2, max_age_ms=60_000) is None
        assert source.counters()["stalls"] == 1
        assert "no new frame" in (source.last_error or "")
        frame = _publish_until_received(publisher, source, value=5)
        assert frame.image[0, 0, 0] == 5
        assert source.status is CameraStatus.OK


def test_frames_from_the_past_are_refused_as_out_of_order(publisher):
    with open_source(_settings(publisher.bound_endpoint)) as source:
        first = _publish_until_received(publisher, source, value=0)
        publisher.publish(_image(9), first.t_capture_ns - 1)
        wait_for(lambda: source.counters()["out_of_order"] == 1, what="the frame from the past to be refused")
        assert source.latest() is None


def test_malformed_messages_are_counted_and_do_not_stop_the_source(publisher):
    with open_source(_settings(publisher.bound_endpoint)) as source:
        _publish_until_received(publisher, source, value=0)
        raw_socket = publisher._socket  # the same bound PUB socket, to inject garbage a buggy peer might send
        raw_socket.send(b"\x93\x01\x02\x03")  # a msgpack array, not a frame
        wait_for(lambda: source.counters()["bad_messages"] == 1, what="the bad message to be counted")
        assert "not valid msgpack" in (source.last_error or "")
        raw_socket.send(msgpack.packb({"v": 1, "seq": 0}))  # a map without the frame fields
        wait_for(lambda: source.counters()["bad_messages"] == 2, what="the second bad message to be counted")
        assert "t_capture_ns" in (source.last_error or "")
        # Still working: a new frame comes through. Frames of value 0 that were still queued when the first one was
        # taken (a loaded machine) may come first, and one frame may be lost (CONFLATE): wait for a 3 to arrive.
        wait_for(lambda: publisher.publish(_image(3), time.monotonic_ns()) or (
            (frame := source.wait_latest(0.05)) is not None and frame.image[0, 0, 0] == 3), what="a frame of 3")


def test_frame_message_round_trip_and_validation():
    image = _image(42, height=4, width=5)
    message = FrameMessage.from_image(image, t_capture_ns=123, seq=7)
    decoded = decode_frame_message(encode_frame_message(message))
    assert decoded == message and decoded.v == 1
    np.testing.assert_array_equal(decoded.image(), image)
    wrong_size = msgpack.packb(message.model_dump() | {"height": 5}, use_bin_type=True)
    with pytest.raises(FrameMessageError, match="data has 60 bytes"):
        decode_frame_message(wrong_size)
    wrong_version = msgpack.packb(message.model_dump() | {"v": 2}, use_bin_type=True)
    with pytest.raises(FrameMessageError, match="v:"):
        decode_frame_message(wrong_version)
    with pytest.raises(FrameMessageError, match="not valid msgpack"):
        decode_frame_message(b"\xc1")
    with pytest.raises(FrameMessageError, match="RGB uint8"):
        FrameMessage.from_image(np.zeros((4, 4), np.uint8), 0, 0)


def test_publisher_refuses_a_taken_endpoint(publisher):
    with pytest.raises(OSError, match="cannot bind"):
        FramePublisher(publisher.bound_endpoint)


def test_wait_latest_wakes_on_a_new_frame(publisher):
    with open_source(_settings(publisher.bound_endpoint)) as source:
        _publish_until_received(publisher, source, value=0)
        timer = threading.Timer(0.2, lambda: publisher.publish(_image(4), time.monotonic_ns()))
        timer.start()
        start = time.monotonic()
        frame = source.wait_latest(GENEROUS_S)
        timer.join()
        assert frame is not None and frame.image[0, 0, 0] == 4
        assert time.monotonic() - start < GENEROUS_S - 1  # woken by the frame, not by the timeout


def test_closed_source_hands_out_nothing(publisher):
    source = open_source(_settings(publisher.bound_endpoint))
    source.start()
    _publish_until_received(publisher, source, value=0)
    frames_before = source.counters()["frames"]
    publisher.publish(_image(1), time.monotonic_ns())
    wait_for(lambda: source.counters()["frames"] > frames_before, what="frame 1 to arrive")  # unread at close
    source.close()
    assert source.status is CameraStatus.CLOSED
    assert source.latest() is None and source.wait_latest(0.1) is None
    with pytest.raises(CameraError, match="already started"):
        source.start()
