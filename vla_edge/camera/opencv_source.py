"""Frames from OpenCV's VideoCapture: a V4L2 device, a video file, or an RTSP/HTTP(S) URL."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from vla_edge.camera.core import CameraError, CameraStatus, GrabberSource
from vla_edge.config import CameraSettings

_URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
_DEFAULT_FILE_FPS = 30.0
_FIRST_BACKOFF_S = 0.1


class SourceKind(str, enum.Enum):
    DEVICE = "device"
    FILE = "file"
    URL = "url"


@dataclass(frozen=True)
class CaptureTarget:
    """What ``settings.source`` names, resolved to what VideoCapture needs."""

    kind: SourceKind
    target: int | str
    backend: int
    label: str


def parse_source(source: str) -> CaptureTarget:
    """``"0"`` / ``"/dev/video0"`` → V4L2 device; ``rtsp://…`` / ``http(s)://…`` → FFMPEG URL; else a file path."""
    text = source.strip()
    if text.isdigit():
        return CaptureTarget(SourceKind.DEVICE, int(text), cv2.CAP_V4L2, f"V4L2 device {text}")
    if text.startswith("/dev/"):
        return CaptureTarget(SourceKind.DEVICE, text, cv2.CAP_V4L2, f"V4L2 device {text}")
    scheme = urlsplit(text).scheme.lower()
    if scheme in _URL_SCHEMES:
        return CaptureTarget(SourceKind.URL, text, cv2.CAP_FFMPEG, f"URL {_redact(text)}")
    if "://" in text:
        raise CameraError(f"camera source {text!r}: unsupported URL scheme {scheme!r} (use one of {_URL_SCHEMES})")
    return CaptureTarget(SourceKind.FILE, text, cv2.CAP_FFMPEG, f"video file {text}")


def _redact(url: str) -> str:
    # RTSP URLs often carry rtsp://user:password@host; never put the password in a log or error.
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


class OpenCVSource(GrabberSource):
    """A grabber thread over ``cv2.VideoCapture``; files are paced at their own FPS so they behave like a camera."""

    def __init__(self, settings: CameraSettings) -> None:
        self.target = parse_source(settings.source)
        super().__init__(settings, name=self.target.label)
        self._capture: cv2.VideoCapture | None = None
        self._file_period_s = 1.0 / _DEFAULT_FILE_FPS

    # --- opening ------------------------------------------------------------------------------------------
    def _open(self) -> None:
        if self.target.kind is SourceKind.FILE and not Path(str(self.target.target)).is_file():
            raise CameraError(f"camera {self.name}: no such file (check camera.source)")
        capture = self._try_open()
        if capture is None:
            raise CameraError(f"camera {self.name}: cannot open it ({self._open_hint()})")
        self._capture = capture

    def _open_hint(self) -> str:
        if self.target.kind is SourceKind.DEVICE:
            return "is it plugged in, is another process using it, is this user in the 'video' group?"
        if self.target.kind is SourceKind.URL:
            return "is the stream reachable from here and the URL right?"
        return "is it a video format FFmpeg can decode?"

    def _try_open(self) -> cv2.VideoCapture | None:
        timeout_ms = int(max(self.settings.stall_timeout_ms, 1))
        params: list[int] = []
        if self.target.kind is SourceKind.URL:
            # Without these FFmpeg can block for ~30 s on a dead stream; with them read() returns False instead.
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(timeout_ms, 2000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        capture = cv2.VideoCapture(self.target.target, self.target.backend, params)
        if not capture.isOpened():
            capture.release()
            return None
        self._reset_timing()
        if self.target.kind is SourceKind.DEVICE:
            self._configure_device(capture)
        if self.target.kind is SourceKind.FILE:
            fps = capture.get(cv2.CAP_PROP_FPS)
            # Some containers report 0 or absurd rates; fall back to a typical camera rate.
            self._file_period_s = 1.0 / (fps if 0.5 <= fps <= 1000 else _DEFAULT_FILE_FPS)
        return capture

    def _configure_device(self, capture: cv2.VideoCapture) -> None:
        settings = self.settings
        if settings.fourcc:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*settings.fourcc))
        if settings.capture_width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, settings.capture_width)
        if settings.capture_height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, settings.capture_height)
        if settings.capture_fps:
            capture.set(cv2.CAP_PROP_FPS, settings.capture_fps)
        # One driver buffer: the driver otherwise queues ~4 frames and read() returns the oldest of them.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)

    # --- the grabber thread -------------------------------------------------------------------------------
    def _grab_loop(self) -> None:
        if self.target.kind is SourceKind.FILE:
            self._play_file()
        else:
            self._follow_live()

    def _read_rgb(self) -> tuple[np.ndarray, int, float | None] | None:
        """(RGB image, arrival time, the source's own time of the frame in ms or None)."""
        capture = self._capture
        assert capture is not None
        # grab() returns when the frame is in; stamp it then, before decoding, so decode time counts as age.
        if not capture.grab():
            return None
        t_arrival_ns = time.monotonic_ns()
        # V4L2: the driver's buffer timestamp (CLOCK_MONOTONIC); FFmpeg: the frame's media time. See timing.py.
        source_ms = capture.get(cv2.CAP_PROP_POS_MSEC) if self.target.kind is not SourceKind.FILE else None
        ok, bgr = capture.retrieve()
        if not ok or bgr is None:
            return None
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB), t_arrival_ns, source_ms
        if bgr.shape[2] == 4:
            return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB), t_arrival_ns, source_ms
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), t_arrival_ns, source_ms

    def _play_file(self) -> None:
        next_due = time.monotonic()
        while not self._stop.is_set():
            # Pace by the file's own FPS so a file behaves like a camera instead of racing through.
            delay = next_due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            grabbed = self._read_rgb()
            if grabbed is None:
                if self.settings.loop_file and self._rewind():
                    continue
                self._set_status(CameraStatus.ENDED, "end of video file")
                return
            self._publish(grabbed[0], grabbed[1])  # paced here, so its arrival is its capture
            next_due = max(next_due + self._file_period_s, time.monotonic() - self._file_period_s)

    def _rewind(self) -> bool:
        # Reopen rather than seek: seeking to frame 0 is unreliable for some codecs and containers.
        assert self._capture is not None
        self._capture.release()
        self._capture = self._try_open()
        return self._capture is not None

    def _follow_live(self) -> None:
        backoff_s = _FIRST_BACKOFF_S
        max_backoff_s = self.settings.reopen_backoff_max_ms / 1000
        while not self._stop.is_set():
            if self._capture is None:
                self._count("reopen_attempts")
                self._capture = self._try_open()
                if self._capture is None:
                    self._set_status(CameraStatus.FAILED, f"cannot reopen; retrying in {backoff_s:.1f} s")
                    if self._stop.wait(backoff_s):
                        return
                    backoff_s = min(backoff_s * 2, max_backoff_s)
                    continue
            grabbed = self._read_rgb()
            if grabbed is not None:
                rgb, arrival_ns, source_ms = grabbed
                clock = self._source_clock()
                self._publish_live(rgb, arrival_ns, source_ms if clock else None, clock or "stream")
                backoff_s = _FIRST_BACKOFF_S
                continue
            # No frame: a device unplugged, a stream dropped, or a read timeout. Report, then reopen: the
            # old capture may hold a dead connection that would never deliver again.
            self._count("read_failures")
            self._set_status(CameraStatus.STALLED, "read returned no frame; reopening")
            self._capture.release()
            self._capture = None
            if self._stop.wait(backoff_s):
                return
            backoff_s = min(backoff_s * 2, max_backoff_s)

    def _source_clock(self) -> str | None:
        """Whose times date this source's frames (camera.clock; see camera/timing.py): "device" (V4L2 buffer
        timestamps), "stream" (RTSP's RTP times, or any URL's with clock = "source"), or None (arrival)."""
        if self.settings.clock == "arrival":
            return None
        if self.target.kind is SourceKind.DEVICE:
            return "device"
        if self.settings.clock == "source" or urlsplit(str(self.target.target)).scheme.lower() in ("rtsp", "rtsps"):
            return "stream"
        return None  # HTTP(S): FFmpeg makes MJPEG frame times up at an assumed 25 fps

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
