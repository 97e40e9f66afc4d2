"""Manifest sections shared by the policy types: normalisation, camera views, state, actions, names, limits.

LeRobot's normalisation modes map onto schema 2 as LeRobot computes them (``NormalizerProcessorStep``):
MEAN_STD → ``mean_std`` (eps 1e-8 added to std); MIN_MAX → ``min_max`` on min/max; QUANTILES → ``min_max`` on
q01/q99; QUANTILE10 → ``min_max`` on q10/q90; IDENTITY → ``identity``. Image views express MIN_MAX-style maps as
per-channel mean/std (2 (x − lo)/(hi − lo) − 1 = (x − (lo + hi)/2) / ((hi − lo)/2)).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

EPS = 1e-8
_MODE_STATS = {"MEAN_STD": None, "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
               "QUANTILE10": ("q10", "q90")}


def mode_name(mode: Any) -> str:
    return str(getattr(mode, "value", mode))


def norm_mode(config: Any, feature_type: str) -> str:
    for key, value in config.normalization_mapping.items():
        if mode_name(key) == feature_type:
            return mode_name(value)
    return "IDENTITY"


def _vector(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def normalisation(mode: str, stats: dict[str, np.ndarray] | None, in_graph: bool = False) -> dict[str, Any]:
    if mode == "IDENTITY" or not stats:
        return {"mode": "identity", "in_graph": in_graph}
    if mode == "MEAN_STD":
        return {"mode": "mean_std", "mean": _vector(stats["mean"]), "std": _vector(stats["std"]), "eps": EPS,
                "in_graph": in_graph}
    if mode in _MODE_STATS:
        lo, hi = _MODE_STATS[mode]
        return {"mode": "min_max", "low": _vector(stats[lo]), "high": _vector(stats[hi]), "eps": EPS,
                "in_graph": in_graph}
    raise ValueError(f"normalisation mode {mode} has no schema-2 equivalent")


def view_name(feature_key: str) -> str:
    """observation.images.wrist_cam → wrist_cam (schema-2 view names: letters, digits, '_', '-')."""
    name = feature_key.split("observation.images.", 1)[-1] if "observation.images." in feature_key else feature_key
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", name.replace("observation.", ""))
    return name if re.match(r"^[A-Za-z_]", name) else f"view_{name}"


def image_mean_std(mode: str, stats: dict[str, np.ndarray] | None) -> tuple[list[float] | None, list[float] | None]:
    """Per-channel (mean, std) that reproduce LeRobot's image normalisation on [0, 1] pixels, or (None, None)."""
    if mode == "IDENTITY" or not stats:
        return None, None
    if mode == "MEAN_STD":
        return _vector(stats["mean"]), [s + EPS for s in _vector(stats["std"])]
    lo_key, hi_key = _MODE_STATS[mode]
    lo, hi = np.asarray(stats[lo_key]).reshape(-1), np.asarray(stats[hi_key]).reshape(-1)
    return _vector((lo + hi) / 2), _vector(np.maximum((hi - lo) / 2, EPS))


def pixel_camera(feature_key: str, height: int, width: int, mode: str,
                 stats: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """A schema-2 camera fed at the dataset's own size as [0, 1] pixels, normalised as LeRobot normalises VISUAL
    features (ACT and Diffusion Policy; SmolVLA and π0 resize with pad to [-1, 1] instead)."""
    mean, std = image_mean_std(mode, stats)
    return {"name": view_name(feature_key), "height": height, "width": width, "resize": "resize",
            "interpolation": "bilinear", "dtype": "float32", "layout": "chw", "value_range": [0.0, 1.0],
            "mean": mean, "std": std, "lerobot_key": feature_key}


def names(given: list[str] | None, size: int, prefix: str, what: str) -> list[str]:
    if given is None:
        return [f"{prefix}_{i}" for i in range(size)]
    if len(given) != size:
        raise ValueError(f"--{what}-names has {len(given)} names; the policy's {what} has {size} values")
    return list(given)


def action_space(stats: dict[str, np.ndarray], action_names: list[str]) -> dict[str, Any]:
    """Limits from the dataset's min/max (LeRobot checkpoints carry no limits); max_delta = the whole range per
    tick (no jerk limit beyond the range) unless the user sets one later (docs/import-lerobot.md)."""
    n = len(action_names)
    if "min" in stats and "max" in stats:
        low, high = np.asarray(stats["min"], np.float64).reshape(-1), np.asarray(stats["max"], np.float64).reshape(-1)
    else:
        mean, std = np.asarray(stats["mean"], np.float64).reshape(-1), np.asarray(stats["std"], np.float64).reshape(-1)
        low, high = mean - 4 * std, mean + 4 * std
    span = np.maximum(high - low, 1e-6)
    high = np.where(high > low, high, low + span)
    return {"names": action_names, "low": _vector(low[:n]), "high": _vector(high[:n]), "max_delta": _vector(span[:n])}


def frame_to_chw01(frame: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 → float32 3×H×W in [0, 1] (what a LeRobot camera feature holds)."""
    return np.ascontiguousarray(np.transpose(frame.astype(np.float32) / 255.0, (2, 0, 1)))
