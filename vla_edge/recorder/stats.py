"""Per-episode and dataset statistics in LeRobot's layout (pure functions, no IO).

Each feature gets ``min``, ``max``, ``mean``, ``std``, ``count`` and the quantiles ``q01 q10 q50 q90 q99`` that
LeRobot 0.4 computes (its quantile normalisation uses them). Image statistics are per RGB channel on pixel/255,
shaped (3, 1, 1) as LeRobot's normalisation expects, and are taken from the frames **decoded from the episode's
video**, so they describe what a reader of the dataset gets (lossy encoding shifts them; measured in the tests).
Pixels are uint8, so a 256-bin histogram per channel gives exact quantiles at any frame count.

Dataset statistics aggregate the episodes' the way LeRobot's ``aggregate_stats`` does: min of mins, max of maxes,
count-weighted mean, pooled variance, and count-weighted quantiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)

Stats = dict[str, Any]  # stat name -> nested lists (JSON-ready)


def vector_stats(values: np.ndarray) -> Stats:
    """Statistics per dimension of ``values`` (n frames × d dimensions)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.shape[0] == 0:
        raise ValueError("statistics need at least one frame")
    stats: Stats = {
        "min": array.min(axis=0).tolist(),
        "max": array.max(axis=0).tolist(),
        "mean": array.mean(axis=0).tolist(),
        "std": array.std(axis=0).tolist(),
        "count": [int(array.shape[0])],
    }
    for key, q in zip(QUANTILE_KEYS, np.quantile(array, QUANTILES, axis=0), strict=True):
        stats[key] = np.asarray(q).tolist()
    return stats


class PixelHistogram:
    """Counts of each uint8 value per RGB channel over the frames added (one decoded video)."""

    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), dtype=np.int64)
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 frame, got {frame.dtype} {frame.shape}")
        for channel in range(3):
            self.counts[channel] += np.bincount(frame[:, :, channel].ravel(), minlength=256)
        self.frames += 1

    def stats(self) -> Stats:
        if self.frames == 0:
            raise ValueError("statistics need at least one frame")
        values = np.arange(256, dtype=np.float64) / 255.0
        total = self.counts.sum(axis=1).astype(np.float64)  # pixels per channel
        mean = (self.counts * values).sum(axis=1) / total
        var = (self.counts * values**2).sum(axis=1) / total - mean**2
        present = self.counts > 0
        lowest = values[np.argmax(present, axis=1)]
        highest = values[255 - np.argmax(present[:, ::-1], axis=1)]
        cumulative = np.cumsum(self.counts, axis=1)
        stats: Stats = {
            "min": _per_channel(lowest),
            "max": _per_channel(highest),
            "mean": _per_channel(mean),
            "std": _per_channel(np.sqrt(np.maximum(var, 0.0))),
            "count": [self.frames],
        }
        for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
            # The smallest value with at least a fraction q of the pixels at or below it.
            index = np.array([np.searchsorted(cumulative[c], q * total[c]) for c in range(3)])
            stats[key] = _per_channel(values[np.minimum(index, 255)])
        return stats


def _per_channel(values: np.ndarray) -> list:
    return [[[float(v)]] for v in values]


def aggregate(stats_list: list[dict[str, Stats]]) -> dict[str, Stats]:
    """Dataset statistics from per-episode statistics (LeRobot's ``aggregate_stats``)."""
    keys: list[str] = []
    for stats in stats_list:
        keys.extend(k for k in stats if k not in keys)
    return {key: _aggregate_feature([s[key] for s in stats_list if key in s]) for key in keys}


def _aggregate_feature(items: list[Stats]) -> Stats:
    means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in items])
    variances = np.stack([np.asarray(s["std"], dtype=np.float64) ** 2 for s in items])
    counts = np.stack([np.asarray(s["count"], dtype=np.float64) for s in items])
    total = counts.sum(axis=0)
    while counts.ndim < means.ndim:
        counts = counts[..., None]
    mean = (means * counts).sum(axis=0) / total
    variance = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / total
    result: Stats = {
        "min": np.min(np.stack([np.asarray(s["min"], dtype=np.float64) for s in items]), axis=0).tolist(),
        "max": np.max(np.stack([np.asarray(s["max"], dtype=np.float64) for s in items]), axis=0).tolist(),
        "mean": mean.tolist(),
        "std": np.sqrt(variance).tolist(),
        "count": [int(total.reshape(-1)[0])],
    }
    for key in QUANTILE_KEYS:
        if all(key in s for s in items):
            quantiles = np.stack([np.asarray(s[key], dtype=np.float64) for s in items])
            result[key] = ((quantiles * counts).sum(axis=0) / total).tolist()
    return result


def flatten(stats: dict[str, Stats]) -> dict[str, Any]:
    """``{"stats/<feature>/<stat>": value}``: the per-episode columns of ``meta/episodes/*.parquet``."""
    return {f"stats/{feature}/{name}": value for feature, per in stats.items() for name, value in per.items()}


def unflatten(columns: dict[str, Any]) -> dict[str, Stats]:
    stats: dict[str, Stats] = {}
    for column, value in columns.items():
        if column.startswith("stats/"):
            feature, _, name = column[len("stats/"):].rpartition("/")
            stats.setdefault(feature, {})[name] = value
    return stats
