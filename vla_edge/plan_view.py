"""Where a planned chunk goes, in the camera image's own coordinates: what the console and Rerun draw.

An action space "maps onto the image" when it has dimensions named ``x`` and ``y`` (or ``target_x`` and ``target_y``,
as the reference bundle names them) whose limits are [0, 1]: the
workspace is then the camera's view, x to the right and y down, a point at pixel ``(x * width, y * height)``.
That holds for the reference world (``hil/world.py``: a top-down camera over the unit-square table). A real
arm's x/y are not the camera's; drawing its plan would need the camera's calibration, which vla-edge does not
have, so for any other action space no plan is drawn (``ImagePlane.of`` returns None) rather than a wrong one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImagePlane:
    """Which action dimensions are the image's x (right) and y (down), as fractions of its width and height."""

    x_index: int
    y_index: int

    @staticmethod
    def of(names: Sequence[str], low: Sequence[float], high: Sequence[float]) -> ImagePlane | None:
        names = list(names)
        ix = next((names.index(n) for n in ("x", "target_x") if n in names), None)
        iy = next((names.index(n) for n in ("y", "target_y") if n in names), None)
        if ix is None or iy is None:
            return None
        if any(not np.isclose(low[i], 0.0) or not np.isclose(high[i], 1.0) for i in (ix, iy)):
            return None
        return ImagePlane(ix, iy)

    def fractions(self, actions: np.ndarray) -> np.ndarray:
        """``(..., A)`` actions → ``(..., 2)`` image fractions (x, y), clipped to the image."""
        actions = np.asarray(actions)
        return np.clip(np.stack([actions[..., self.x_index], actions[..., self.y_index]], axis=-1), 0.0, 1.0)

    def pixels(self, actions: np.ndarray, width: int, height: int) -> np.ndarray:
        """``(..., A)`` actions → ``(..., 2)`` pixel coordinates (x, y) in a ``width`` × ``height`` image."""
        return self.fractions(actions) * np.array([width, height], dtype=np.float64)


def chosen_index(samples: np.ndarray, chunk: np.ndarray) -> int | None:
    """Which of the K samples is the chunk the scheduler executes (None when it is none of them, e.g. blended)."""
    matches = np.flatnonzero(np.all(np.isclose(samples, chunk[None], atol=1e-7), axis=(1, 2)))
    return int(matches[0]) if matches.size else None
