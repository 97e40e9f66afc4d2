"""OpenCVSource against real inputs: MJPG video files written with cv2.VideoWriter, and an MJPEG-over-HTTP
stream from a local http.server read through OpenCV's FFMPEG backend (stalls, recovery, a dead server)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from vla_edge.camera import CameraError, CameraStatus, OpenCVSource, SourceKind, open_source, parse_source
from tests.waiting import GENEROUS_S, wait_for
from vla_edge.config import CameraSettings

# BGR as OpenCV writes it; the source must hand out RGB.
BGR_BLUE = (255, 0, 0)


def _write_video(path: Path, frames: int, fps: float, size=(64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "MJPG/AVI writing should work in opencv-python-headless"
    for index in range(frames):
        image = np.zeros((size[1], size[0], 3), np.uint8)
        image[:] = BGR_BLUE
        # Frame number in the top-left block's green channel (steps of 8 survive JPEG).
        image[:16, :16] = (0, index * 8, 0)
        writer.write(image)
    writer.release()
    return path


def _frame_number(rgb: np.ndarray) -> int:
    return int(round(float(rgb[:4, :4, 1].mean()) / 8))


def test_parse_source_kinds():
    assert parse_source("0").kind is SourceKind.DEVICE and parse_source("0").target == 0
    assert parse_source("/dev/video2").backend == cv2.CAP_V4L2
    url = parse_source("rtsp://user:secret@cam.local:8554/stream")
    assert url.kind is SourceKind.URL and url.backend == cv2.CAP_FFMPEG
    assert "secret" not in url.label and "user:***@cam.local:8554" in url.label
    assert parse_source("https://x/y.mjpg").kind is SourceKind.URL
    assert parse_source("clips/demo.mp4").kind is SourceKind.FILE
    with pytest.raises(CameraError, match="unsupported URL scheme 'ftp'"):
        parse_source("ftp://host/video")


def test_missing_file_is_named(tmp_path: Path):
    source = open_source(CameraSettings(source=str(tmp_path / "nope.avi")))
    with pytest.raises(CameraError, match=r"nope\.avi: no such file"):
        source.start()


def test_undecodable_file_is_named(tmp_path: Path):
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(CameraError, match=r"junk\.avi: cannot open"):
        open_source(CameraSettings(source=str(junk))).start()


def test_missing_device_is_named():
    with pytest.raises(CameraError, match=r"V4L2 device /dev/video97: cannot open.*video' group"):
        open_source(CameraSettings(source="/dev/video97")).start()


def test_unreachable_url_is_named():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CameraError, match=rf"URL http://127.0.0.1:{port}/s.mjpg: cannot open"):
        open_source(CameraSettings(source=f"http://127.0.0.1:{port}/s.mjpg")).start()


def test_file_plays_at_its_own_fps_in_rgb_then_ends(tmp_path: Path):
    video = _write_video(tmp_path / "clip.avi", frames=12, fps=30)
    settings = CameraSettings(source=str(video), width=32, height=24, max_frame_age_ms=1000)
    source = open_source(settings)
    assert isinstance(source, OpenCVSource)
    numbers: list[int] = []
    started = time.monotonic()
    with source:
        while True:
            frame = source.wait_latest(GENEROUS_S)
            if frame is None:
                break
            assert frame.image.shape == (24, 32, 3) and frame.image.dtype == np.uint8
            # Pure blue away from the marker block: R≈0, B≈255 (BGR→RGB happened).
            assert frame.image[-1, -1, 0] < 30 and frame.image[-1, -1, 2] > 220
            numbers.append(_frame_number(frame.image))
        elapsed = time.monotonic() - started
        assert source.status is CameraStatus.ENDED
        assert source.last_error == "end of video file"
        counters = source.counters()
    # Paced like a camera: 12 frames at 30 fps take ~0.37 s, not a few milliseconds.
    assert elapsed > 0.3
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    # A reader this eager should get nearly every frame; none is handed out twice.
    assert len(numbers) >= 10 and counters["delivered"] == len(numbers) and counters["frames"] == 12


def test_file_loops_when_asked(tmp_path: Path):
    video = _write_video(tmp_path / "short.avi", frames=4, fps=40)
    with open_source(CameraSettings(source=str(video), loop_file=True)) as source:
        numbers = []
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            frame = source.wait_latest(0.5)
            if frame is not None:
                numbers.append(_frame_number(frame.image))
        assert source.status is CameraStatus.OK
    assert len(numbers) > 8, numbers
    assert numbers.count(0) >= 2  # came back to the start


class _MjpegStream:
    """An MJPEG-over-HTTP camera on 127.0.0.1 that can pause (connection open, no bytes) or die."""

    def __init__(self, fps: float = 30.0) -> None:
        self.period_s = 1.0 / fps
        self.sending = threading.Event()
        self.sending.set()
        self.stopping = threading.Event()
        self.next_value = 0
        self.connections = 0
        stream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stream.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while not stream.stopping.is_set():
                        if not stream.sending.is_set():
                            time.sleep(0.01)
                            continue
                        self.wfile.write(stream.part())
                        self.wfile.flush()
                        time.sleep(stream.period_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def part(self) -> bytes:
        image = np.zeros((48, 64, 3), np.uint8)
        image[:] = BGR_BLUE
        image[:16, :16] = (0, (self.next_value % 32) * 8, 0)
        self.next_value += 1
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        body = jpeg.tobytes()
        return b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"\r\n"

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mjpeg() -> Iterator[_MjpegStream]:
    stream = _MjpegStream()
    yield stream
    stream.stop()


def _wait_for_status(source, wanted: CameraStatus, within_s: float) -> float:
    started = time.monotonic()
    while source.status is not wanted:
        if time.monotonic() - started > within_s:
            raise AssertionError(f"status {source.status} after {within_s} s, wanted {wanted}")
        time.sleep(0.01)
    return time.monotonic() - started


def test_http_mjpeg_stream_is_read_through_ffmpeg(mjpeg: _MjpegStream):
    with open_source(CameraSettings(source=mjpeg.url, width=32, height=24)) as source:
        frames = [source.wait_latest(GENEROUS_S) for _ in range(5)]
        assert all(f is not None for f in frames)
        assert source.status is CameraStatus.OK
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs))
    image = frames[-1].image
    assert image.shape == (24, 32, 3) and image[-1, -1, 2] > 220 and image[-1, -1, 0] < 30


def test_http_stream_that_stops_sending_is_stalled_then_recovers(mjpeg: _MjpegStream):
    stall_ms = 500
    settings = CameraSettings(source=mjpeg.url, stall_timeout_ms=stall_ms, max_frame_age_ms=60_000)
    with open_source(settings) as source:
        assert source.wait_latest(GENEROUS_S) is not None
        mjpeg.sending.clear()
        took_s = _wait_for_status(source, CameraStatus.STALLED, within_s=GENEROUS_S)
        # Frames already in flight may still arrive for a moment; after that nothing, and never an old frame.
        while source.latest() is not None:
            pass
        assert source.status is CameraStatus.STALLED
        assert source.latest() is None
        assert source.wait_latest(0.3) is None
        assert source.counters()["stalls"] >= 1 and source.last_error
        mjpeg.sending.set()
        _wait_for_status(source, CameraStatus.OK, within_s=GENEROUS_S)
        assert source.wait_latest(GENEROUS_S) is not None
        counters = source.counters()
    assert took_s >= stall_ms / 1000 * 0.5  # not before the silence (how soon after it is a benchmark's question)
    # FFmpeg's read timeout turned the silence into a failed read, and the source reopened the stream.
    assert counters["read_failures"] >= 1 and counters["reopen_attempts"] >= 1
    assert mjpeg.connections >= 2


def test_http_server_gone_is_failed_and_retried(mjpeg: _MjpegStream):
    settings = CameraSettings(source=mjpeg.url, stall_timeout_ms=300, reopen_backoff_max_ms=200)
    with open_source(settings) as source:
        assert source.wait_latest(GENEROUS_S) is not None
        mjpeg.stop()
        _wait_for_status(source, CameraStatus.FAILED, within_s=GENEROUS_S)
        assert source.latest(max_age_ms=60_000) is None
        wait_for(lambda: source.counters()["reopen_attempts"] >= 2, what="a second reopen attempt")
        assert "cannot reopen" in (source.last_error or "")
