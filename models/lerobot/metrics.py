"""Parity figures of an exported variant against LeRobot's own output (numpy only, no IO, no torch).

Both arrays are action chunks [N, H, A] for the same N observations with the same noise, in LeRobot's normalised
action units (what the graphs compute: the same scale for every dimension, whatever the robot's units).

* ``mae``: mean |candidate - reference|; ``max_abs``: the largest element.
* ``cosine``: per observation, the cosine of the two flattened chunks, then the mean over observations; and the
  worst observation's (``cosine_min``).
* ``spread``: the standard deviation of the reference across the N observations, per element, averaged: how much
  the policy's output moves when the observation moves. A random-weight policy whose outputs barely vary passes
  cosine trivially (every chunk is nearly the same vector), so the spread is reported beside the cosine, and
  ``relative_mae`` = mae / spread says how large the error is against that movement.
* ``centered_cosine``: the same cosine after subtracting each array's mean chunk over the N observations: how well
  the candidate follows what *changes* with the observation. Unlike ``cosine`` it is not carried by a large mean
  chunk (a random-weight ACT's outputs move by ~5 % of their magnitude across observations, so its plain cosine is
  ~1 even when a variant ignores the observation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ParityFigures:
    observations: int
    mae: float
    max_abs: float
    cosine: float
    cosine_min: float
    spread: float
    relative_mae: float
    centered_cosine: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def parity_figures(reference: np.ndarray, candidate: np.ndarray) -> ParityFigures:
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim != 3:
        raise ValueError(f"expected two [N, H, A] chunks of one shape, got {reference.shape} and {candidate.shape}")
    if not (np.all(np.isfinite(reference)) and np.all(np.isfinite(candidate))):
        raise ValueError("parity chunks contain non-finite values")
    n = reference.shape[0]
    diff = np.abs(candidate - reference)
    flat_ref = reference.reshape(n, -1)
    flat_can = candidate.reshape(n, -1)
    norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_can, axis=1)
    cosines = np.where(norms > 0, np.sum(flat_ref * flat_can, axis=1) / np.maximum(norms, 1e-300), 0.0)
    spread = float(np.mean(np.std(reference, axis=0))) if n > 1 else 0.0
    mae = float(diff.mean())
    centered_ref = (reference - reference.mean(axis=0)).reshape(-1)
    centered_can = (candidate - candidate.mean(axis=0)).reshape(-1)
    denominator = float(np.linalg.norm(centered_ref) * np.linalg.norm(centered_can))
    centered = float(centered_ref @ centered_can / denominator) if denominator > 0 else 0.0
    return ParityFigures(
        observations=n,
        mae=mae,
        max_abs=float(diff.max()),
        cosine=float(cosines.mean()),
        cosine_min=float(cosines.min()),
        spread=spread,
        relative_mae=mae / spread if spread > 0 else float("inf"),
        centered_cosine=centered,
    )


def verdict(figures: ParityFigures, cosine_bound: float, mae_bound: float) -> str | None:
    """None when the variant passes; otherwise the reason, naming the figure and its bound."""
    if figures.cosine < cosine_bound:
        return f"cosine {figures.cosine:.5f} < {cosine_bound}"
    if figures.mae > mae_bound:
        return f"action MAE {figures.mae:.5f} > {mae_bound} (normalised units)"
    return None
