"""What every frame source shares: the newest-frame slot, the freshness rules, status, stall detection, counters.

The guarantees live here once, so each source (OpenCV, simulator) only has to open, grab and release:
- newest only: the grabber overwrites a size-1 slot; older frames are dropped, never queued;
- never twice: ``latest()`` hands out a frame at most once;
- never stale: a frame older than ``max_age_ms`` (capture time to now) is refused and counted;
- silence is a state: no new frame for ``stall_timeout_ms`` makes the status "stalled" (logged, counted),
  and the caller, getting ``None``, holds.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from vla_edge.camera.timing import FrameTiming
from vla_edge.config import CameraSettings
from vla_edge.errors import VlaEdgeError
from vla_edge.types import Frame

log = logging.getLogger("vla_edge.camera")

_NS_PER_MS = 1_000_000


class CameraError(VlaEdgeError):
    """A camera source cannot be opened or used; the message names the source."""


class CameraStatus(str, enum.Enum):
    STARTING = "starting"  # opened, no frame yet
    OK = "ok"  # frames arriving
    STALLED = "stalled"  # no new frame within stall_timeout_ms; may recover by itself or by a reopen
    FAILED = "failed"  # the source is lost (cannot be read or reopened); devices and URLs keep retrying
    ENDED = "ended"  # a video file reached its end (and loop_file is off)
    CLOSED = "closed"  # close() was called

    @property
    def live(self) -> bool:
        """Frames are arriving or about to: the states in which what the camera shows may be acted on."""
        return self in (CameraStatus.OK, CameraStatus.STARTING)


@runtime_checkable
class FrameSource(Protocol):
    """A camera. Implemented by ``OpenCVSource`` and ``SimSource``; made by ``open_source(settings)``."""

    def start(self) -> None: ...
    def close(self) -> None: ...
    def latest(self, max_age_ms: float | None = None) -> Frame | None: ...
    def wait_latest(self, timeout_s: float, max_age_ms: float | None = None) -> Frame | None: ...
    @property
    def status(self) -> CameraStatus: ...
    @property
    def last_error(self) -> str | None: ...
    def counters(self) -> dict[str, int]: ...
    def __enter__(self) -> FrameSource: ...
    def __exit__(self, *exc: object) -> None: ...


@dataclass
class _Counters:
    frames: int = 0  # frames put into the slot
    delivered: int = 0  # frames handed out by latest()/wait_latest()
    overwritten: int = 0  # frames replaced by a newer one before anyone took them (newest wins)
    stale_rejected: int = 0  # frames refused because older than max_age_ms
    out_of_order: int = 0  # frames whose capture time was not after the previous frame's
    bad_messages: int = 0  # sim: undecodable or malformed frame messages
    read_failures: int = 0  # OpenCV: read() returned no frame
    stalls: int = 0  # transitions into "stalled"
    reopen_attempts: int = 0  # OpenCV: devices and URLs re-opened after a failure
    size_changes: int = 0  # the source's native frame size changed mid-stream
    size_rejected: int = 0  # frames refused because their native size differs (on_size_change = "fail")
    burst_rejected: int = 0  # frames refused as part of a burst of held-back frames
    recoveries: int = 0  # transitions from stalled/failed back to ok


def to_policy_image(rgb: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    """The frame as published: a fresh, writable, contiguous RGB array, resized only when ``camera.width/height``
    are set (unset: the camera's own resolution; the policy resizes each view once, as its bundle declares)."""
    if width is None or height is None or (rgb.shape[0] == height and rgb.shape[1] == width):
        return np.array(rgb, dtype=np.uint8, copy=True, order="C")
    shrinking = rgb.shape[0] > height or rgb.shape[1] > width
    # INTER_AREA averages pixels when shrinking (no aliasing); INTER_LINEAR is the sensible choice to enlarge.
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interpolation)


class GrabberSource(ABC):
    """A frame source with one grabber thread writing the newest frame into a size-1 slot."""

    def __init__(self, settings: CameraSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._frame_taken = True
        self._last_arrival_ns = 0
        self._last_capture_ns = -1
        self._next_seq = 0
        self._status = CameraStatus.STARTING
        self._status_since_ns = time.monotonic_ns()
        self._last_error: str | None = None
        self._counters = _Counters()
        self._hold_until_ns = 0  # the slot's frame came after a gap: not deliverable before (FrameTiming)
        self._native_size: tuple[int, int] | None = None  # (height, width) of the source's frames
        self._timing = FrameTiming(settings.max_frame_age_ms,
                                   period_ms=1000.0 / settings.capture_fps if settings.capture_fps else None)
        self._clock_note: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what a source implements -------------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Open the underlying capture; raise CameraError naming the source if it cannot be opened."""

    @abstractmethod
    def _grab_loop(self) -> None:
        """Run in the grabber thread until ``self._stop`` is set; call ``_publish`` for each frame."""

    @abstractmethod
    def _release(self) -> None:
        """Free the underlying capture (called in the grabber thread after the loop ends)."""

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise CameraError(f"camera {self.name}: already started")
        self._open()
        self._status_since_ns = time.monotonic_ns()
        self._thread = threading.Thread(target=self._run, name=f"camera-grabber[{self.name}]", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            join_s = max(2.0, 2 * self.settings.stall_timeout_ms / 1000)
            thread.join(join_s)
            if thread.is_alive():
                log.warning("camera %s: grabber thread did not stop within %.1f s", self.name, join_s)
        with self._cond:
            self._status = CameraStatus.CLOSED
            self._frame = None
            self._cond.notify_all()

    def __enter__(self) -> GrabberSource:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> None:
        try:
            self._grab_loop()
        except Exception as exc:  # noqa: BLE001 - the grabber must report, not die silently
            log.exception("camera %s: grabber thread crashed", self.name)
            self._set_status(CameraStatus.FAILED, f"grabber crashed: {exc!r}")
        finally:
            try:
                self._release()
            except Exception:  # noqa: BLE001
                log.exception("camera %s: release failed", self.name)

    # --- for the grabber thread ---------------------------------------------------------------------------
    def _publish_live(self, rgb: np.ndarray, arrival_ns: int, source_ms: float | None = None,
                      clock: str = "stream") -> bool:
        """A frame from a live source, stamped by ``FrameTiming``: the source's own clock where it has one and it
        can be trusted, else the arrival time; a frame in a burst of held-back frames is refused as stale."""
        stamp = self._timing.stamp(arrival_ns, source_ms, clock)
        note = stamp.basis if not self._timing.source_clock_distrusted else "arrival (the source's clock disagrees " \
            "with its frame pace; not trusted until reopened)"
        if note != self._clock_note:
            log.info("camera %s: capture times from the %s", self.name, note)
            self._clock_note = note
        if stamp.burst:
            with self._cond:
                self._counters.burst_rejected += 1
                if stamp.retract_previous and not self._frame_taken:
                    self._frame_taken = True  # the frame after the gap opened the burst: it is old too
                    self._counters.burst_rejected += 1
            return False
        return self._publish(rgb, stamp.t_capture_ns, hold_until_ns=arrival_ns + stamp.hold_ns if stamp.hold_ns else 0)

    def _reset_timing(self) -> None:
        """A (re)opened source: its clock and pace start again."""
        self._timing.reset()

    def _size_refused(self, native: tuple[int, int]) -> bool:
        """Apply ``camera.on_size_change`` to a frame of native size ``native`` (height, width); caller holds the lock."""
        if self._native_size is None:
            self._native_size = native
            return False
        if native == self._native_size:
            return False
        was = f"{self._native_size[1]}x{self._native_size[0]}"
        now = f"{native[1]}x{native[0]}"
        if self.settings.on_size_change == "accept":
            self._counters.size_changes += 1
            log.warning("camera %s: native frame size changed mid-stream from %s to %s; accepted "
                        "(camera.on_size_change = accept): the new frames are resized as the old ones were",
                        self.name, was, now)
            self._native_size = native
            return False
        self._counters.size_rejected += 1
        if self._status is not CameraStatus.FAILED:
            self._counters.size_changes += 1
            self._last_error = (f"native frame size changed mid-stream from {was} to {now}; frames refused until it "
                                "is back (camera.on_size_change = fail)")
            log.warning("camera %s: failed (%s)", self.name, self._last_error)
            self._status = CameraStatus.FAILED
            self._status_since_ns = time.monotonic_ns()
            self._cond.notify_all()
        return True

    def _publish(self, rgb: np.ndarray, t_capture_ns: int, hold_until_ns: int = 0) -> bool:
        """Put a frame in the slot (newest wins). False if refused: its time is not after the last, or its native
        size changed and ``camera.on_size_change`` is "fail"."""
        native = (int(rgb.shape[0]), int(rgb.shape[1]))
        with self._cond:
            if self._size_refused(native):
                return False
        image = to_policy_image(rgb, self.settings.width, self.settings.height)
        now = time.monotonic_ns()
        with self._cond:
            if self._status is CameraStatus.CLOSED:  # a grabber slow to stop must not revive a closed source
                return False
            if t_capture_ns <= self._last_capture_ns:
                self._counters.out_of_order += 1
                return False
            if not self._frame_taken:
                self._counters.overwritten += 1
            self._frame = Frame(image=image, t_capture_ns=t_capture_ns, seq=self._next_seq)
            self._frame_taken = False
            self._hold_until_ns = hold_until_ns
            self._next_seq += 1
            self._last_capture_ns = t_capture_ns
            self._last_arrival_ns = now
            self._counters.frames += 1
            if self._status is not CameraStatus.OK:
                if self._status in (CameraStatus.STALLED, CameraStatus.FAILED):
                    self._counters.recoveries += 1
                    log.info("camera %s: recovered: frames arriving again after %.1f s %s (was: %s)", self.name,
                             (now - self._status_since_ns) / 1e9, self._status.value, self._last_error or "no detail")
                    self._last_error = None
                self._status = CameraStatus.OK
                self._status_since_ns = now
            self._cond.notify_all()
        return True

    def _set_status(self, status: CameraStatus, error: str | None = None) -> None:
        with self._cond:
            if self._status is CameraStatus.CLOSED:
                return
            if error is not None:
                self._last_error = error
            if status is not self._status:
                if status is CameraStatus.STALLED:
                    self._counters.stalls += 1
                log_level = logging.INFO if status in (CameraStatus.OK, CameraStatus.ENDED) else logging.WARNING
                log.log(log_level, "camera %s: %s%s", self.name, status.value, f" ({error})" if error else "")
                self._status = status
                self._status_since_ns = time.monotonic_ns()
            self._cond.notify_all()

    def _note_error(self, error: str) -> None:
        with self._cond:
            repeated = error == self._last_error
            self._last_error = error
        if not repeated:  # a source failing 30 times a second must not flood the log
            log.warning("camera %s: %s", self.name, error)

    def _check_stall(self) -> None:
        with self._cond:
            self._stall_check_locked(time.monotonic_ns())

    def _count(self, counter: str) -> None:
        with self._cond:
            setattr(self._counters, counter, getattr(self._counters, counter) + 1)

    def _stall_check_locked(self, now_ns: int) -> None:
        # Checked by whoever looks (caller or grabber), so a grabber blocked inside a read cannot hide a stall.
        if not self._status.live:
            return
        since = self._last_arrival_ns if self._status is CameraStatus.OK else self._status_since_ns
        silent_ms = (now_ns - since) / _NS_PER_MS
        if silent_ms > self.settings.stall_timeout_ms:
            self._counters.stalls += 1
            self._last_error = f"no new frame for {silent_ms:.0f} ms (stall_timeout_ms={self.settings.stall_timeout_ms:g})"
            log.warning("camera %s: stalled: %s", self.name, self._last_error)
            self._status = CameraStatus.STALLED
            self._status_since_ns = now_ns

    # --- for the caller -----------------------------------------------------------------------------------
    def _take_locked(self, now_ns: int, max_age_ms: float) -> Frame | None:
        self._stall_check_locked(now_ns)
        frame = self._frame
        if frame is None or self._frame_taken or now_ns < self._hold_until_ns:
            return None
        if self._status in (CameraStatus.STALLED, CameraStatus.FAILED, CameraStatus.CLOSED):
            return None
        self._frame_taken = True  # a refused frame is consumed too: it can only get older
        if (now_ns - frame.t_capture_ns) / _NS_PER_MS > max_age_ms:
            self._counters.stale_rejected += 1
            return None
        self._counters.delivered += 1
        return frame

    def latest(self, max_age_ms: float | None = None) -> Frame | None:
        """The newest frame if nobody has had it yet and it is not older than ``max_age_ms``; else None."""
        limit = self.settings.max_frame_age_ms if max_age_ms is None else max_age_ms
        with self._cond:
            return self._take_locked(time.monotonic_ns(), limit)

    def wait_latest(self, timeout_s: float, max_age_ms: float | None = None) -> Frame | None:
        """Block up to ``timeout_s`` for a new, fresh frame; None on timeout, stall, end or close."""
        limit = self.settings.max_frame_age_ms if max_age_ms is None else max_age_ms
        deadline = time.monotonic_ns() + int(timeout_s * 1e9)
        with self._cond:
            while True:
                now = time.monotonic_ns()
                frame = self._take_locked(now, limit)
                if frame is not None:
                    return frame
                if now >= deadline or self._status in (CameraStatus.ENDED, CameraStatus.CLOSED):
                    return None
                # Wake at least every stall timeout so a stall is noticed while we wait.
                wait_s = min((deadline - now) / 1e9, self.settings.stall_timeout_ms / 1000)
                if self._hold_until_ns > now:  # a frame after a gap becomes deliverable then, unless withdrawn
                    wait_s = min(wait_s, (self._hold_until_ns - now) / 1e9)
                self._cond.wait(max(wait_s, 0.0005))

    @property
    def status(self) -> CameraStatus:
        with self._cond:
            self._stall_check_locked(time.monotonic_ns())
            return self._status

    @property
    def last_error(self) -> str | None:
        with self._cond:
            return self._last_error

    def counters(self) -> dict[str, int]:
        with self._cond:
            return dict(vars(self._counters))
