"""Per-chunk confidence: pure functions from sampled chunks, history and bundle statistics to a `Verdict`.

Signals (higher is worse for every one of them, so each is compared as ``value <= threshold``):

* ``spread``: disagreement among the K chunks sampled from different noise seeds for the same observation,
  the mean per-tick standard deviation in units of the action range. A flow/diffusion policy that "knows" what
  to do collapses its samples; one that is guessing spreads them.
* ``consistency``: temporal action consistency (Sentinel, Agia et al. 2024): the maximum mean discrepancy between
  the new chunk's samples and the previous chunk's samples over the ticks both cover. Erratic policies change
  their mind from one chunk to the next.
* ``ood``: how far the observation embedding lies from the training set: the Mahalanobis distance under the
  bundle's (shrunk) training covariance, divided by sqrt(dim) so it reads as "standard deviations per dimension"
  (with only a diagonal, this is the RMS z-score). The bundle's ``distance_quantiles`` divided by sqrt(dim) are
  its in-distribution reference values.
* ``limits``: how far the chosen chunk leaves the action limits (0 when inside).
* ``jerk``: the largest per-tick change of the chosen chunk, including the step from the last executed action,
  as a fraction of the allowed per-tick change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from vla_edge.types import ChunkSamples, SignalScore, Verdict

SIGNALS = ("spread", "consistency", "ood", "limits", "jerk")

# Used only when neither the bundle nor the config carries calibrated thresholds (`vla-edge calibrate`).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "spread": 0.05,
    "consistency": 0.5,
    "ood": 4.0,
    "limits": 0.0,
    "jerk": 1.05,
}


@dataclass(frozen=True)
class ActionBounds:
    """Per-dimension action limits (physical units) and the largest allowed change per control tick."""

    low: np.ndarray
    high: np.ndarray
    max_delta: np.ndarray

    @property
    def span(self) -> np.ndarray:
        return np.maximum(self.high - self.low, 1e-9)


@dataclass(frozen=True)
class EmbeddingStats:
    """Training-set statistics of the observation embedding; ``precision`` (inverse covariance) is optional."""

    mean: np.ndarray
    std: np.ndarray
    precision: np.ndarray | None = None


@dataclass(frozen=True)
class ChunkContext:
    """What the verdict needs besides the new samples: the chunk being replaced and what already ran."""

    previous: ChunkSamples | None = None
    previous_start_tick: int = 0
    start_tick: int = 0
    last_executed: np.ndarray | None = None


def select_chunk(actions: np.ndarray) -> np.ndarray:
    """The sample closest to the others (medoid): a real sample, unlike the mean of a multimodal set."""
    if actions.shape[0] == 1:
        return actions[0]
    flat = actions.reshape(actions.shape[0], -1)
    distances = np.linalg.norm(flat[:, None, :] - flat[None, :, :], axis=-1).sum(axis=1)
    return actions[int(np.argmin(distances))]


def spread_score(actions: np.ndarray, bounds: ActionBounds, dims: np.ndarray | None = None) -> float:
    if actions.shape[0] < 2:
        return 0.0
    normalised = actions / bounds.span
    std = normalised.std(axis=0)
    if dims is not None:
        std = std[:, dims]
    return float(std.mean())


def _mmd_rbf(x: np.ndarray, y: np.ndarray) -> float:
    """Biased MMD² estimate with an RBF kernel whose width is the median pairwise distance."""
    z = np.concatenate([x, y])
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    median = np.median(d2[d2 > 0]) if np.any(d2 > 0) else 1.0
    kernel = np.exp(-d2 / max(median, 1e-6))
    n = x.shape[0]
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return float(max(kxx.mean() + kyy.mean() - 2.0 * kxy.mean(), 0.0))


def consistency_score(current: ChunkSamples, context: ChunkContext, bounds: ActionBounds) -> float:
    """MMD between the two chunks' samples over their overlapping ticks (0 when they do not overlap)."""
    if context.previous is None:
        return 0.0
    offset = context.start_tick - context.previous_start_tick
    overlap = context.previous.horizon - offset
    if offset < 0 or overlap <= 0:
        return 0.0
    overlap = min(overlap, current.horizon)
    previous = context.previous.actions[:, offset : offset + overlap] / bounds.span
    new = current.actions[:, :overlap] / bounds.span
    return _mmd_rbf(previous.reshape(previous.shape[0], -1), new.reshape(new.shape[0], -1))


def ood_score(embedding: np.ndarray, stats: EmbeddingStats) -> float:
    """Mahalanobis distance / sqrt(dim); the diagonal (RMS z-score) when the stats carry no precision matrix."""
    centred = np.asarray(embedding, dtype=np.float64).reshape(-1) - stats.mean
    if not np.all(np.isfinite(centred)):
        return float("inf")
    if stats.precision is None:
        z = centred / np.maximum(stats.std, 1e-6)
        return float(np.sqrt(np.mean(z**2)))
    # A shrunk covariance keeps the quadratic form positive; the clamp only absorbs rounding.
    squared = float(centred @ stats.precision @ centred)
    return float(np.sqrt(max(squared, 0.0) / centred.shape[0]))


def limits_score(chunk: np.ndarray, bounds: ActionBounds) -> float:
    if not np.all(np.isfinite(chunk)):
        return float("inf")
    below = np.maximum(bounds.low - chunk, 0.0) / bounds.span
    above = np.maximum(chunk - bounds.high, 0.0) / bounds.span
    return float(max(below.max(), above.max()))


def jerk_score(chunk: np.ndarray, bounds: ActionBounds, last_executed: np.ndarray | None) -> float:
    path = chunk if last_executed is None else np.vstack([last_executed[None, :], chunk])
    if path.shape[0] < 2:
        return 0.0
    steps = np.abs(np.diff(path, axis=0))
    limited = np.isfinite(bounds.max_delta) & (bounds.max_delta > 0)
    if not np.any(limited):
        return 0.0
    return float((steps[:, limited] / bounds.max_delta[limited]).max())


SCORE = "failure_score"
_SCORE_PREFIX = "score."


@dataclass(frozen=True)
class FailureScore:
    """Several signals combined into one calibrated score (``vla_edge.calibration.fit_failure_score``):
    P(fail) = sigmoid(bias + sum_s w_s * log1p(value_s / scale_s)), with every weight >= 0 so that a higher signal
    never makes a chunk look safer; a signal that does not predict failure gets weight 0 (dropped). ``scale_s`` is
    the signal's typical value on good chunks, so 0 (e.g. no previous chunk to be consistent with) stays 0 and large
    values grow like a logarithm. A chunk fails the score when P(fail) > ``threshold``.

    It travels in the same thresholds map as the per-signal thresholds (the bundle manifest's
    ``confidence_thresholds``, a thresholds file): ``score.bias``, ``score.threshold``, ``score.weight.<signal>``,
    ``score.scale.<signal>``.
    """

    weights: Mapping[str, float]
    scales: Mapping[str, float]
    bias: float
    threshold: float

    def logit(self, values: Mapping[str, float]) -> float:
        logit = self.bias
        for name, weight in self.weights.items():
            value = float(values.get(name, 0.0))
            if not np.isfinite(value):
                return float("inf")
            logit += weight * float(np.log1p(max(value, 0.0) / self.scales.get(name, 1.0)))
        return logit

    def probability(self, values: Mapping[str, float]) -> float:
        return float(1.0 / (1.0 + np.exp(-np.clip(self.logit(values), -60.0, 60.0))))

    def to_thresholds(self) -> dict[str, float]:
        out = {f"{_SCORE_PREFIX}bias": float(self.bias), f"{_SCORE_PREFIX}threshold": float(self.threshold)}
        out.update({f"{_SCORE_PREFIX}weight.{name}": float(w) for name, w in self.weights.items()})
        out.update({f"{_SCORE_PREFIX}scale.{name}": float(self.scales.get(name, 1.0)) for name in self.weights})
        return out

    @classmethod
    def from_thresholds(cls, thresholds: Mapping[str, float]) -> FailureScore | None:
        """The score a thresholds map carries, or None when it carries none."""
        if f"{_SCORE_PREFIX}threshold" not in thresholds:
            return None

        def group(kind: str) -> dict[str, float]:
            prefix = f"{_SCORE_PREFIX}{kind}."
            return {k[len(prefix):]: float(v) for k, v in thresholds.items() if k.startswith(prefix)}

        return cls(group("weight"), group("scale"), float(thresholds.get(f"{_SCORE_PREFIX}bias", 0.0)),
                   float(thresholds[f"{_SCORE_PREFIX}threshold"]))


@dataclass(frozen=True)
class ConfidenceMonitor:
    """Turns K samples into a verdict with one score per signal (and the combined failure score, when the
    thresholds carry one). Holds no state between calls."""

    bounds: ActionBounds
    embedding_stats: EmbeddingStats | None
    thresholds: Mapping[str, float]
    spread_dims: np.ndarray | None = None

    @property
    def score(self) -> FailureScore | None:
        return FailureScore.from_thresholds(self.thresholds)

    @property
    def signal_thresholds(self) -> dict[str, float]:
        """The threshold of each signal a verdict reports (the combined score under its name ``failure_score``);
        the score's parameters (``score.*``) are not signals."""
        out = {k: float(v) for k, v in self.thresholds.items() if not k.startswith(_SCORE_PREFIX)}
        score = self.score
        if score is not None:
            out[SCORE] = score.threshold
        return out

    def with_thresholds(self, thresholds: Mapping[str, float]) -> ConfidenceMonitor:
        """The same monitor with ``thresholds`` over the defaults (signals not named keep their default)."""
        return replace(self, thresholds={**DEFAULT_THRESHOLDS, **thresholds})

    def evaluate(self, samples: ChunkSamples, chunk: np.ndarray, context: ChunkContext) -> Verdict:
        values = {
            "consistency": consistency_score(samples, context, self.bounds),
            "limits": limits_score(chunk, self.bounds),
            "jerk": jerk_score(chunk, self.bounds, context.last_executed),
        }
        if samples.num_samples >= 2:  # one sample (single_pass policies such as ACT): spread does not apply
            values = {"spread": spread_score(samples.actions, self.bounds, self.spread_dims), **values}
        if self.embedding_stats is not None:
            values["ood"] = ood_score(samples.embedding, self.embedding_stats)
        signals = tuple(
            SignalScore(name, value, float(self.thresholds.get(name, np.inf)), bool(value <= self.thresholds.get(name, np.inf)))
            for name, value in values.items()
        )
        score = self.score
        if score is not None:
            p = score.probability(values)
            signals += (SignalScore(SCORE, p, score.threshold, bool(p <= score.threshold)),)
        failed = [s.name for s in signals if not s.passed]
        reason = "" if not failed else "low confidence: " + ", ".join(
            f"{s.name} {s.value:.3g} > {s.threshold:.3g}" for s in signals if not s.passed
        )
        return Verdict(passed=not failed, signals=signals, reason=reason)
