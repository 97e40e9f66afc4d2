"""Observation preprocessing a schema-2 bundle declares: camera views, state normalisation, observation history.

Pure functions (numpy, OpenCV for the one resize) plus a small bounded history buffer; no ONNX Runtime here.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vla_edge.bundle_schema import CameraView, Normalisation
from vla_edge.errors import VlaEdgeError


class ObservationError(VlaEdgeError):
    """An image or state does not fit what the bundle declares."""


_INTERPOLATION = {"bilinear": 1, "area": 3, "nearest": 0}  # cv2.INTER_LINEAR, INTER_AREA, INTER_NEAREST


def check_frame(image: object, view: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ObservationError(f"view {view!r}: image must be an H×W×3 RGB array, got shape {getattr(image, 'shape', None)}")
    if image.dtype != np.uint8:
        raise ObservationError(f"view {view!r}: image must be uint8 (0..255), got {image.dtype}")
    return image


def _resize(image: np.ndarray, width: int, height: int, interpolation: str) -> np.ndarray:
    import cv2  # only here: a camera already at the bundle's size never pays OpenCV's ~15 MiB

    return cv2.resize(image, (width, height), interpolation=_INTERPOLATION[interpolation])


def prepare_view(frame: np.ndarray, view: CameraView) -> np.ndarray:
    """One frame (uint8 H×W×3 RGB, any size) → the view's image, without the batch axis ([H, W, 3] or [3, H, W]).

    Order (docs/bundle-format.md): value mapping (float32 views) → mean/std → resize (or resize with pad) → layout.
    """
    image = check_frame(frame, view.name)
    if view.dtype == "uint8" and view.layout == "hwc" and image.shape[0] == view.height \
            and image.shape[1] == view.width and image.flags.c_contiguous:
        return image  # already what the graph takes (the reference's camera): no copy
    if view.dtype == "float32":
        lo, hi = view.value_range
        image = image.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)
        if view.mean is not None and view.std is not None:
            image = (image - np.asarray(view.mean, np.float32)) / np.asarray(view.std, np.float32)
    h, w = image.shape[:2]
    if (h, w) != (view.height, view.width):
        if view.resize == "none":
            raise ObservationError(
                f"view {view.name!r}: frames must be {view.width}×{view.height} (the bundle does not resize), got {w}×{h}"
            )
        if view.resize == "resize":
            image = _resize(image, view.width, view.height, view.interpolation)
        else:
            ratio = max(w / view.width, h / view.height)
            rh, rw = int(h / ratio), int(w / ratio)
            resized = _resize(image, rw, rh, view.interpolation) if (rh, rw) != (h, w) else image
            if view.pad_side == "both":
                top, left = (view.height - rh) // 2, (view.width - rw) // 2
            else:
                top, left = view.height - rh, view.width - rw
            fill = np.uint8(round(view.pad_value)) if view.dtype == "uint8" else np.float32(view.pad_value)
            image = np.full((view.height, view.width, 3), fill, dtype=resized.dtype)
            image[top : top + rh, left : left + rw] = resized
    if view.layout == "chw":
        image = image.transpose(2, 0, 1)
    return np.ascontiguousarray(image, dtype=np.uint8 if view.dtype == "uint8" else np.float32)


def normalise(values: np.ndarray, norm: Normalisation) -> np.ndarray:
    """LeRobot's forward normalisation (docs/bundle-format.md)."""
    x = np.asarray(values, dtype=np.float32)
    if norm.mode == "mean_std":
        return ((x - np.asarray(norm.mean, np.float32)) / (np.asarray(norm.std, np.float32) + np.float32(norm.eps))).astype(
            np.float32
        )
    if norm.mode == "min_max":
        low = np.asarray(norm.low, np.float32)
        d = np.asarray(norm.high, np.float32) - low
        d = np.where(d == 0, np.float32(norm.eps), d)
        return (np.float32(2.0) * (x - low) / d - np.float32(1.0)).astype(np.float32)
    return x


def denormalise(values: np.ndarray, norm: Normalisation) -> np.ndarray:
    """LeRobot's inverse normalisation."""
    x = np.asarray(values, dtype=np.float32)
    if norm.mode == "mean_std":
        return (x * np.asarray(norm.std, np.float32) + np.asarray(norm.mean, np.float32)).astype(np.float32)
    if norm.mode == "min_max":
        low = np.asarray(norm.low, np.float32)
        d = np.asarray(norm.high, np.float32) - low
        d = np.where(d == 0, np.float32(norm.eps), d)
        return ((x + np.float32(1.0)) / np.float32(2.0) * d + low).astype(np.float32)
    return x


def pad_last(values: np.ndarray, size: int | None) -> np.ndarray:
    """Zero-pad the last axis to ``size`` (LeRobot's pad_vector)."""
    if size is None or values.shape[-1] == size:
        return values
    out = np.zeros((*values.shape[:-1], size), dtype=values.dtype)
    out[..., : values.shape[-1]] = values
    return out


def discretise_state(state_norm: np.ndarray, bins: int, pad_to: int | None) -> str:
    """π0.5's state in the prompt: np.digitize over linspace(-1, 1, bins + 1)[:-1], minus 1, space-separated."""
    padded = pad_last(np.asarray(state_norm, np.float32).reshape(-1), pad_to)
    indices = np.digitize(padded, bins=np.linspace(-1, 1, bins + 1)[:-1]) - 1
    return " ".join(str(int(i)) for i in indices)


@dataclass(frozen=True)
class ObservedFrame:
    """One entry of the history: the frames of every view and the raw state, at one time."""

    t_ns: int
    images: Mapping[str, np.ndarray]
    state: np.ndarray


class ObservationHistory:
    """The last observations, for policies that read T > 1 of them (Diffusion Policy: n_obs_steps = 2).

    ``select(now)`` picks, for each of the T slots (oldest first, the last being ``now``'s observation), the newest
    recorded observation at or before now − k·interval (k = T−1 … 0), with half an interval of slack; a slot with
    none (a step's start) repeats the oldest one there is, as LeRobot's populate_queues does. Only references to the
    frames are kept, for at most ``length`` intervals.
    """

    def __init__(self, length: int, interval_ns: int) -> None:
        self.length = length
        self.interval_ns = max(int(interval_ns), 1)
        self._entries: deque[ObservedFrame] = deque(maxlen=max(4 * length, 8))
        self._lock = threading.Lock()  # the tick thread records, the inference worker selects

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def record(self, entry: ObservedFrame) -> None:
        with self._lock:
            if self._entries and entry.t_ns < self._entries[-1].t_ns:
                return  # older than what we have: never reorder time
            if self._entries and entry.t_ns == self._entries[-1].t_ns:
                self._entries[-1] = entry
                return
            self._entries.append(entry)

    def select(self, current: ObservedFrame) -> list[ObservedFrame]:
        if self.length == 1:
            return [current]
        self.record(current)
        with self._lock:
            entries = list(self._entries)
        times = [e.t_ns for e in entries]
        chosen: list[ObservedFrame | None] = []
        for k in range(self.length - 1, 0, -1):
            target = current.t_ns - k * self.interval_ns + self.interval_ns // 2
            i = bisect.bisect_right(times, target) - 1
            chosen.append(entries[i] if i >= 0 and entries[i].t_ns <= current.t_ns else None)
        present = [c for c in chosen if c is not None]
        oldest = present[0] if present else current
        return [c if c is not None else oldest for c in chosen] + [current]
