"""Camera sources behind one interface.

``open_source(settings.camera)`` returns a ``FrameSource``: the simulated world (``source = "sim"``) or OpenCV
(a V4L2 device index or path, a video file, an RTSP/HTTP(S) URL). A grabber thread keeps only the newest frame;
``latest()`` never hands out a frame twice and never one older than ``max_frame_age_ms``; a stalled or failed
camera shows in ``status`` and ``latest()`` returns None, so the caller holds. See docs/camera.md.
"""

from __future__ import annotations

from vla_edge.camera.core import CameraError, CameraStatus, FrameSource, GrabberSource
from vla_edge.camera.message import (
    FRAME_MESSAGE_VERSION,
    MAX_FRAME_MESSAGE_BYTES,
    FrameMessage,
    FrameMessageError,
    decode_frame_message,
    encode_frame_message,
)
from vla_edge.camera.opencv_source import OpenCVSource, SourceKind, parse_source
from vla_edge.camera.multi import MultiViewSource, view_settings
from vla_edge.camera.sim_source import SimSource
from vla_edge.config import CameraSettings

SIM_SOURCE = "sim"


def open_cameras(settings: CameraSettings, view_names: list[str]) -> FrameSource:
    """The source(s) for the camera views a bundle reads: ``camera.source`` for a single view without its own
    ``[camera.views.<name>]``; else a `MultiViewSource` with one source per view. Not yet started."""
    per_view = view_settings(settings, view_names)
    if len(view_names) == 1:
        return open_source(per_view[view_names[0]])
    return MultiViewSource({name: open_source(s) for name, s in per_view.items()}, settings.max_frame_age_ms)


def open_source(settings: CameraSettings) -> FrameSource:
    """The source ``settings.source`` names, not yet started: call ``start()`` or use it as a context manager.

    Raises CameraError for a source that cannot be understood (e.g. an unsupported URL scheme).
    """
    if settings.source.strip() == SIM_SOURCE:
        return SimSource(settings)
    return OpenCVSource(settings)


__all__ = [
    "FRAME_MESSAGE_VERSION",
    "MAX_FRAME_MESSAGE_BYTES",
    "CameraError",
    "CameraSettings",
    "CameraStatus",
    "FrameMessage",
    "FrameMessageError",
    "FrameSource",
    "GrabberSource",
    "MultiViewSource",
    "OpenCVSource",
    "SimSource",
    "SourceKind",
    "decode_frame_message",
    "encode_frame_message",
    "open_cameras",
    "open_source",
    "parse_source",
]
