"""The values that flow between stages inside the daemon (plain dataclasses; no I/O here).

Wire messages that cross a process boundary are pydantic models in ``vla_edge.wire``.
All times are ``time.monotonic_ns()`` values unless a name says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One camera image (RGB, uint8, H×W×3) and when it was captured. With several camera views, ``image`` is the
    first view's and ``views`` holds every view's by name (``vla_edge.camera.MultiViewSource``)."""

    image: np.ndarray
    t_capture_ns: int
    seq: int
    views: Mapping[str, np.ndarray] | None = None

    @property
    def policy_input(self) -> np.ndarray | Mapping[str, np.ndarray]:
        """What PolicyRunner.encode takes: every view by name, or the one image."""
        return self.views if self.views is not None else self.image


@dataclass(frozen=True)
class Observation:
    """What the policy sees for one chunk: a frame, the robot's measured state and the instruction."""

    image: np.ndarray
    state: np.ndarray
    instruction: str
    t_capture_ns: int
    views: Mapping[str, np.ndarray] | None = None  # every camera view by name (multi-view bundles)

    @property
    def policy_input(self) -> np.ndarray | Mapping[str, np.ndarray]:
        return self.views if self.views is not None else self.image


@dataclass(frozen=True)
class ChunkSamples:
    """K sampled action chunks (K×H×A, physical units) for one observation, with per-stage timings (ms)."""

    actions: np.ndarray
    embedding: np.ndarray
    t_obs_ns: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    success: float | None = None  # P(step done) from the bundle's success detector, when it has one

    @property
    def num_samples(self) -> int:
        return int(self.actions.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[1])


@dataclass(frozen=True)
class SignalScore:
    """One confidence signal: its value, the threshold it is compared to, and whether it passed."""

    name: str
    value: float
    threshold: float
    passed: bool


@dataclass(frozen=True)
class Verdict:
    """Whether a chunk may be actuated, and why not when it may not."""

    passed: bool
    signals: tuple[SignalScore, ...]
    reason: str = ""

    @property
    def score(self) -> dict[str, float]:
        return {s.name: s.value for s in self.signals}
