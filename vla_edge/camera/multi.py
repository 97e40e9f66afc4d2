"""Several camera views as one source: one ``FrameSource`` per view the bundle names, combined per frame.

The first view paces: ``latest()`` hands out a combined `Frame` when the first view has a new frame and every other
view has a frame no older than ``max_age_ms`` (each view's newest, kept until a newer one arrives). ``Frame.image``
is the first view's image, ``Frame.views`` every view's, ``t_capture_ns`` the oldest view's capture time (so age
checks are conservative). The combined status is the worst of the views'. Each view is captured at its own
resolution; the policy resizes each once (docs/bundle-format.md, camera views).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from vla_edge.camera.core import CameraError, CameraStatus, FrameSource
from vla_edge.config import CameraSettings
from vla_edge.types import Frame

_SEVERITY = [CameraStatus.CLOSED, CameraStatus.FAILED, CameraStatus.ENDED, CameraStatus.STALLED, CameraStatus.STARTING,
             CameraStatus.OK]


def view_settings(settings: CameraSettings, view_names: list[str]) -> dict[str, CameraSettings]:
    """Each view's camera settings: ``[camera.views.<name>]`` over ``[camera]``; the first view may use
    ``camera.source`` itself. Raises CameraError naming a view with no source."""
    out: dict[str, CameraSettings] = {}
    unknown = sorted(set(settings.views) - set(view_names))
    if unknown:
        raise CameraError(f"camera.views names {unknown}, which the bundle does not read (its views: {view_names})")
    for index, name in enumerate(view_names):
        view = settings.views.get(name)
        if view is None:
            if index == 0:
                out[name] = settings.model_copy(update={"views": {}})
                continue
            raise CameraError(f"the bundle reads camera view {name!r}: give it a source in [camera.views.{name}] "
                              f"(views: {view_names})")
        update = {k: v for k, v in view.model_dump().items() if v is not None}
        update["views"] = {}
        out[name] = settings.model_copy(update=update)
    return out


class MultiViewSource:
    """`FrameSource` over one source per view (the first view paces)."""

    def __init__(self, sources: Mapping[str, FrameSource], max_frame_age_ms: float) -> None:
        if not sources:
            raise CameraError("no camera views")
        self._sources = dict(sources)
        self._names = list(self._sources)
        self._max_age_ms = max_frame_age_ms
        self._newest: dict[str, Frame] = {}
        self._lock = threading.Lock()
        self._seq = 0

    @property
    def view_names(self) -> list[str]:
        return list(self._names)

    def start(self) -> None:
        started = []
        try:
            for source in self._sources.values():
                source.start()
                started.append(source)
        except BaseException:
            for source in started:
                source.close()
            raise

    def close(self) -> None:
        for source in self._sources.values():
            source.close()

    def __enter__(self) -> MultiViewSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latest(self, max_age_ms: float | None = None) -> Frame | None:
        limit = self._max_age_ms if max_age_ms is None else max_age_ms
        with self._lock:
            for name, source in self._sources.items():
                frame = source.latest(limit)
                if frame is not None:
                    self._newest[name] = frame
            return self._combine(limit)

    def _combine(self, limit: float) -> Frame | None:
        primary = self._newest.get(self._names[0])
        if primary is None or primary.seq == self._seq:
            return None
        now = time.monotonic_ns()
        frames = {}
        for name in self._names:
            frame = self._newest.get(name)
            if frame is None or (now - frame.t_capture_ns) / 1e6 > limit:
                return None  # a view without a fresh frame: nothing to act on yet
            frames[name] = frame
        self._seq = primary.seq
        return Frame(image=primary.image, t_capture_ns=min(f.t_capture_ns for f in frames.values()), seq=primary.seq,
                     views={name: f.image for name, f in frames.items()})

    def wait_latest(self, timeout_s: float, max_age_ms: float | None = None) -> Frame | None:
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self.latest(max_age_ms)
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0 or self.status in (CameraStatus.ENDED, CameraStatus.CLOSED):
                return None
            # Wait for the pacing view's next frame (it is kept, not consumed twice: latest() above caches it).
            primary = self._sources[self._names[0]].wait_latest(min(left, 0.05), max_age_ms)
            if primary is not None:
                with self._lock:
                    self._newest[self._names[0]] = primary

    @property
    def status(self) -> CameraStatus:
        statuses = [source.status for source in self._sources.values()]
        return min(statuses, key=_SEVERITY.index)

    @property
    def last_error(self) -> str | None:
        for name, source in self._sources.items():
            if source.last_error:
                return f"view {name}: {source.last_error}"
        return None

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, source in self._sources.items():
            for key, value in source.counters().items():
                out[key] = out.get(key, 0) + value
                out[f"{name}.{key}"] = value
        return out
