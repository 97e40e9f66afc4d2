"""Calibrating the confidence thresholds from held-out rollouts, with a stated guarantee (split conformal).

Input: one row per held-out task *step*: the largest value each signal took over the step's chunks (a step is
flagged by the gate as soon as one chunk exceeds a threshold, so the step's maximum is what a threshold sees)
and whether the judge failed the step.

The rule (see docs/confidence.md):

1. **Thresholds from successful steps only** (split-conformal, as in FAIL-Detect): for a level ``a``, the
   threshold of signal ``s`` is the ``ceil((n+1)(1-a))``-th smallest of the ``n`` successful steps' maxima of
   ``s``. For a new successful step exchangeable with them, P(its maximum > threshold) <= ``a``: each signal
   raises a false alarm on at most a fraction ``a`` of good steps (all signals together: at most ``k·a``).
2. **The level from the failed steps, for a target miss rate** (conformal risk control, Angelopoulos et al.
   2022): a failed step is *missed* when no signal exceeds its threshold. Misses only fall as ``a`` grows, so we
   take the smallest ``a`` on a grid with ``(m/(m+1))·miss_rate(a) + 1/(m+1) <= target`` over the ``m``
   failed steps; then the expected miss rate on a new failed step is at most ``target``. The smallest target
   this can promise is ``1/(m+1)``: fewer failures than that, and calibration refuses, saying how many it needs.
3. The figures promised are then *measured* on a separate test split of whole chains.

Pure numpy; no I/O except the two writers at the bottom.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vla_edge.bundle import MANIFEST_FILE, SIGNATURE_FILE, read_manifest, write_manifest
from vla_edge.confidence import DEFAULT_THRESHOLDS, SIGNALS, FailureScore
from vla_edge.errors import VlaEdgeError

CALIBRATED_SIGNALS: tuple[str, ...] = ("spread", "consistency", "ood")
"""Set from data. ``limits`` stays 0 (any excursion fails) and ``jerk`` comes from the action space's max_delta,
unless the caller also fits ``jerk`` (never below ``FLOORS``)."""

LEVEL_GRID = np.concatenate([np.geomspace(1e-3, 0.05, 40), np.linspace(0.05, 0.5, 46)[1:]])
"""Candidate per-signal false-alarm levels, fine at the small end where useful thresholds live."""


class CalibrationError(VlaEdgeError):
    """Not enough (or unusable) held-out data for the calibration asked for."""


@dataclass(frozen=True)
class StepScores:
    """Held-out steps: ``values[s]`` is each step's maximum of signal ``s``; ``failed`` is the judge's verdict."""

    values: dict[str, np.ndarray]
    failed: np.ndarray

    def __post_init__(self) -> None:
        n = self.failed.shape[0]
        for name, column in self.values.items():
            if column.shape != (n,):
                raise ValueError(f"signal {name!r} has {column.shape} values for {n} steps")

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Mapping[str, float], bool]], signals: Sequence[str]) -> StepScores:
        values = {s: np.array([float(r[0].get(s, 0.0)) for r in rows], dtype=np.float64) for s in signals}
        return cls(values, np.array([bool(r[1]) for r in rows], dtype=bool))

    def subset(self, mask: np.ndarray) -> StepScores:
        return StepScores({s: v[mask] for s, v in self.values.items()}, self.failed[mask])

    @property
    def n_steps(self) -> int:
        return int(self.failed.shape[0])

    @property
    def n_failed(self) -> int:
        return int(self.failed.sum())


def conformal_threshold(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n+1)(1-level))``-th smallest score: P(new exchangeable score > it) <= level.

    When that rank exceeds n (too few scores for the level), no finite threshold keeps the promise: inf.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    n = ordered.shape[0]
    rank = math.ceil((n + 1) * (1.0 - level) - 1e-9)  # the epsilon keeps float rounding from adding a rank
    if rank > n:
        return float("inf")
    return float(ordered[max(rank, 1) - 1])


def flagged(scores: StepScores, thresholds: Mapping[str, float]) -> np.ndarray:
    """Which steps the gate would stop: any signal strictly above its threshold (the monitor passes ``<=``)."""
    hit = np.zeros(scores.n_steps, dtype=bool)
    for name, column in scores.values.items():
        if name in thresholds:
            hit |= column > thresholds[name]
    return hit


@dataclass(frozen=True)
class Rates:
    false_alarm: float  # flagged successful steps / successful steps
    miss: float  # unflagged failed steps / failed steps
    n_success: int
    n_failed: int


def rates(scores: StepScores, thresholds: Mapping[str, float]) -> Rates:
    hit = flagged(scores, thresholds)
    good, bad = ~scores.failed, scores.failed
    return Rates(
        false_alarm=float(hit[good].mean()) if good.any() else float("nan"),
        miss=float((~hit[bad]).mean()) if bad.any() else float("nan"),
        n_success=int(good.sum()),
        n_failed=int(bad.sum()),
    )


FLOORS: dict[str, float] = {"jerk": 1.05}
"""A fitted threshold never goes below these: a jerk threshold under the action space's own speed limit (plus a
5 % margin) would refuse chunks that are physically fine."""


def thresholds_at_level(successes: StepScores, level: float, signals: Sequence[str]) -> dict[str, float]:
    return {s: max(conformal_threshold(successes.values[s], level), FLOORS.get(s, -math.inf)) for s in signals}


def calibrated_signals(include_jerk: bool = False) -> tuple[str, ...]:
    return (*CALIBRATED_SIGNALS, "jerk") if include_jerk else CALIBRATED_SIGNALS


def fixed_thresholds(include_jerk: bool = False) -> dict[str, float]:
    """The gate's signals that calibration does not fit (limits; jerk unless asked): their defaults."""
    fitted = calibrated_signals(include_jerk)
    return {s: DEFAULT_THRESHOLDS[s] for s in SIGNALS if s not in fitted}


@dataclass(frozen=True)
class Calibration:
    thresholds: dict[str, float]
    level: float  # per-signal false-alarm level a
    rule: Literal["target_miss_rate", "false_alarm_rate"]
    target: float
    calibration: Rates  # on the steps the thresholds were fitted to
    miss_bound: float | None  # (m/(m+1)) miss + 1/(m+1): the conformal risk-control bound at the chosen level


def calibrate_false_alarm(
    scores: StepScores,
    level: float,
    signals: Sequence[str] = CALIBRATED_SIGNALS,
    fixed: Mapping[str, float] | None = None,
) -> Calibration:
    """Rule 1 alone: each calibrated signal flags at most ``level`` of good steps. ``fixed`` thresholds (limits,
    jerk) are not fitted but are part of the gate, so the reported rates include their flags."""
    successes = scores.subset(~scores.failed)
    if successes.n_steps < 1:
        raise CalibrationError("no successful held-out step: the thresholds are fitted to successful steps")
    needed = math.ceil(1.0 / level) - 1
    if successes.n_steps < needed:
        raise CalibrationError(
            f"a false-alarm level of {level:g} needs at least {needed} successful held-out steps, got "
            f"{successes.n_steps}; roll out more chains or raise the level"
        )
    thresholds = thresholds_at_level(successes, level, signals)
    gate = {**(fixed or {}), **thresholds}
    return Calibration(thresholds, level, "false_alarm_rate", level, rates(scores, gate), None)


UNINFORMATIVE_AUROC = 0.5


def calibrate_miss_rate(
    scores: StepScores,
    target_miss_rate: float,
    signals: Sequence[str] = CALIBRATED_SIGNALS,
    fixed: Mapping[str, float] | None = None,
) -> Calibration:
    """Rules 1 and 2: the smallest per-signal false-alarm level whose risk-control bound on misses <= target.

    ``fixed`` thresholds (limits, jerk) are part of the gate: a failure they flag is not a miss, and their false
    alarms are counted in the reported rates."""
    if not 0.0 < target_miss_rate < 1.0:
        raise CalibrationError(f"the target miss rate must be in (0, 1), got {target_miss_rate}")
    successes, failures = scores.subset(~scores.failed), scores.subset(scores.failed)
    m = failures.n_steps
    if successes.n_steps < 1:
        raise CalibrationError("no successful held-out step: the thresholds are fitted to successful steps")
    needed = math.ceil(1.0 / target_miss_rate) - 1
    if m < needed:
        raise CalibrationError(
            f"a target miss rate of {target_miss_rate:g} needs at least {needed} failed held-out steps, got {m}; "
            "roll out more chains or raise the target"
        )
    # A signal that does not rank failed steps above good ones (AUROC <= 0.5 on these steps) only adds false
    # alarms: it is kept as an outlier check at the largest value calibration saw, instead of being fitted.
    uninformative = {s: float(scores.values[s].max()) for s in signals
                     if not auroc(scores.values[s], scores.failed) > UNINFORMATIVE_AUROC}
    fitted = [s for s in signals if s not in uninformative]
    # Below 1/(n+1) a conformal threshold would have to be infinite (the signal switched off): not offered.
    usable = LEVEL_GRID[LEVEL_GRID >= 1.0 / (successes.n_steps + 1)]
    for level in usable:
        thresholds = {**thresholds_at_level(successes, float(level), fitted), **uninformative}
        gate = {**(fixed or {}), **thresholds}
        miss = float((~flagged(failures, gate)).mean())
        bound = (m / (m + 1)) * miss + 1.0 / (m + 1)
        if bound <= target_miss_rate:
            return Calibration(
                thresholds, float(level), "target_miss_rate", target_miss_rate, rates(scores, gate), bound
            )
    raise CalibrationError(
        f"no threshold level up to a {LEVEL_GRID[-1]:.0%} false-alarm rate per signal misses fewer than "
        f"{target_miss_rate:.1%} of failed steps: these signals do not separate this policy's failures well "
        "enough; raise the target miss rate (checkpoint verification catches what the gate misses)"
    )


SCORE_SIGNALS: tuple[str, ...] = ("spread", "consistency", "ood", "jerk")
"""The signals a combined failure score may use (``limits`` stays a hard check at 0)."""


@dataclass(frozen=True)
class ChunkSteps:
    """Held-out steps with every chunk's signal values: what a per-chunk gate (the combined score) is fitted on."""

    chunks: list[list[Mapping[str, float]]]
    failed: np.ndarray

    @property
    def n_steps(self) -> int:
        return int(self.failed.shape[0])


@dataclass(frozen=True)
class ScoreFit:
    thresholds: dict[str, float]  # the whole gate: outlier caps, limits, and the score's keys
    score: FailureScore
    level_bound: float  # the conformal risk-control bound on the miss rate at the chosen threshold
    calibration: Rates
    auroc: float


def _features(values: Mapping[str, float], signals: Sequence[str], scales: Mapping[str, float]) -> np.ndarray:
    return np.array([np.log1p(max(float(values.get(s, 0.0)), 0.0) / scales[s]) for s in signals])


def _nonnegative_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 3000) -> tuple[np.ndarray, float]:
    """Class-balanced logistic regression with weights >= 0 (projected Adam), on standardised columns; returns
    weights and bias for the raw columns."""
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    z = (x - mean) / std
    pos = max(float(y.sum()), 1.0)
    neg = max(float((1 - y).sum()), 1.0)
    sample_w = np.where(y > 0.5, 0.5 / pos, 0.5 / neg)
    w, b = np.zeros(z.shape[1]), 0.0
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), 0.0, 0.0
    lr, beta1, beta2 = 0.05, 0.9, 0.999
    for t in range(1, steps + 1):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w + b, -60, 60)))
        g = sample_w * (p - y)
        grad_w = z.T @ g + l2 * w
        grad_b = float(g.sum())
        m_w = beta1 * m_w + (1 - beta1) * grad_w
        v_w = beta2 * v_w + (1 - beta2) * grad_w**2
        m_b = beta1 * m_b + (1 - beta1) * grad_b
        v_b = beta2 * v_b + (1 - beta2) * grad_b**2
        w = w - lr * (m_w / (1 - beta1**t)) / (np.sqrt(v_w / (1 - beta2**t)) + 1e-8)
        b = b - lr * (m_b / (1 - beta1**t)) / (np.sqrt(v_b / (1 - beta2**t)) + 1e-8)
        w = np.maximum(w, 0.0)  # a higher signal never makes a chunk look safer
    raw_w = w / std
    return raw_w, float(b - (raw_w * mean).sum())


def fit_failure_score(
    steps: ChunkSteps, target_miss_rate: float, signals: Sequence[str] = SCORE_SIGNALS,
    fixed: Mapping[str, float] | None = None,
) -> ScoreFit:
    """Fit a combined failure score on held-out steps and set its threshold for a target miss rate.

    1. Weights: a class-balanced logistic regression of "the step failed" on each signal's log maximum over the
       step's chunks, weights constrained >= 0 (a signal that does not predict failure gets 0: dropped).
    2. Threshold: the gate stops a step at its first chunk whose score exceeds the threshold, so a step's score is
       its chunks' maximum. Conformal risk control as in ``calibrate_miss_rate``: the largest threshold with
       ``(m/(m+1)) * miss + 1/(m+1) <= target`` over the ``m`` failed steps.
    3. Each fitted signal keeps an outlier cap at the largest value seen on successful steps (a chunk unlike any
       good one is refused whatever the score says); ``fixed`` thresholds (limits) stay as they are.
    """
    if not 0.0 < target_miss_rate < 1.0:
        raise CalibrationError(f"the target miss rate must be in (0, 1), got {target_miss_rate}")
    failed = steps.failed.astype(bool)
    m = int(failed.sum())
    needed = math.ceil(1.0 / target_miss_rate) - 1
    if m < needed:
        raise CalibrationError(
            f"a target miss rate of {target_miss_rate:g} needs at least {needed} failed held-out steps, got {m}; "
            "roll out more chains or raise the target"
        )
    if m == steps.n_steps:
        raise CalibrationError("no successful held-out step: the score needs both outcomes")
    good_chunks = [c for chunks, f in zip(steps.chunks, failed, strict=True) if not f for c in chunks]
    scales = {}
    for s in signals:
        typical = float(np.median([float(c.get(s, 0.0)) for c in good_chunks])) if good_chunks else 1.0
        scales[s] = typical if typical > 1e-9 else 1.0
    usable = [i for i, chunks in enumerate(steps.chunks) if chunks]
    x = np.array([np.max([_features(c, signals, scales) for c in steps.chunks[i]], axis=0) for i in usable])
    y = failed[usable].astype(np.float64)
    weights, bias = _nonnegative_logistic(x, y)
    keep = {s: float(w) for s, w in zip(signals, weights, strict=True) if w > 1e-9}
    scales = {s: scales[s] for s in keep}
    provisional = FailureScore(keep, scales, bias, 1.0)
    step_p = np.array([max((provisional.probability(c) for c in chunks), default=0.0) for chunks in steps.chunks])
    # The largest threshold whose risk-control bound on misses meets the target.
    allowed = math.floor(target_miss_rate * (m + 1) - 1 + 1e-9)  # failed steps that may stay unflagged
    failed_p = np.sort(step_p[failed])
    threshold = float(np.nextafter(failed_p[allowed], -np.inf)) if allowed < m else 1.0
    score = FailureScore(keep, scales, bias, threshold)
    # Every candidate signal keeps an outlier cap (the largest value a good chunk showed), the dropped ones too.
    caps = {s: max(float(c.get(s, 0.0)) for c in good_chunks) for s in signals}
    thresholds = {k: float(v) for k, v in {**caps, **(fixed or {}), **score.to_thresholds()}.items()
                  if math.isfinite(v)}
    flagged_steps = np.array([
        any(_chunk_flagged(c, thresholds, score) for c in chunks) for chunks in steps.chunks
    ])
    miss = float((~flagged_steps[failed]).mean())
    rates_ = Rates(float(flagged_steps[~failed].mean()), miss, int((~failed).sum()), m)
    bound = (m / (m + 1)) * miss + 1.0 / (m + 1)
    return ScoreFit(thresholds, score, bound, rates_, auroc(step_p, failed))


def _chunk_flagged(values: Mapping[str, float], thresholds: Mapping[str, float], score: FailureScore) -> bool:
    if any(float(values.get(s, 0.0)) > t for s, t in thresholds.items() if not s.startswith("score.")):
        return True
    return score.probability(values) > score.threshold


def gate_flags(steps: ChunkSteps, thresholds: Mapping[str, float]) -> np.ndarray:
    """Which steps a gate with ``thresholds`` (per-signal, and a combined score if they carry one) would stop."""
    score = FailureScore.from_thresholds(thresholds)
    per_signal = {k: v for k, v in thresholds.items() if not k.startswith("score.")}
    out = []
    for chunks in steps.chunks:
        hit = False
        for values in chunks:
            if any(float(values.get(s, 0.0)) > t for s, t in per_signal.items()):
                hit = True
            elif score is not None and score.probability(values) > score.threshold:
                hit = True
            if hit:
                break
        out.append(hit)
    return np.array(out, dtype=bool)


def precision_recall(flagged: np.ndarray, failed: np.ndarray) -> tuple[float, float]:
    """Precision (flagged steps that failed) and recall (failed steps flagged); nan when undefined."""
    flagged, failed = np.asarray(flagged, bool), np.asarray(failed, bool)
    tp = float((flagged & failed).sum())
    precision = tp / flagged.sum() if flagged.any() else float("nan")
    recall = tp / failed.sum() if failed.any() else float("nan")
    return float(precision), float(recall)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for predicting ``positive`` (ties count half); nan without both
    classes. Equals the Mann–Whitney U statistic over (positives × negatives)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    finite = np.where(np.isfinite(scores), scores, np.where(scores > 0, np.finfo(float).max, -np.finfo(float).max))
    order = np.argsort(finite, kind="mergesort")
    ranks = np.empty(finite.shape[0], dtype=np.float64)
    sorted_scores = finite[order]
    # Average ranks over ties, so equal scores contribute one half.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [finite.shape[0]]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = 0.5 * (start + end - 1) + 1.0
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# ----------------------------------------------------------------------------------------------- the report


class RatesModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    false_alarm: float | None
    miss: float | None
    n_success: int
    n_failed: int

    @classmethod
    def of(cls, r: Rates) -> RatesModel:
        clean = lambda x: None if not math.isfinite(x) else round(x, 6)  # noqa: E731
        return cls(false_alarm=clean(r.false_alarm), miss=clean(r.miss), n_success=r.n_success, n_failed=r.n_failed)


class CalibrationReport(BaseModel):
    """What ``vla-edge calibrate`` writes (``--out``): the thresholds the daemon reads and how they were made."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    thresholds: dict[str, float] = Field(
        description="Signal name -> threshold; a chunk passes when value <= it. With gate 'score' also the combined "
        "failure score's score.* keys (vla_edge.confidence.FailureScore).")
    gate: Literal["per-signal", "score"] = "per-signal"
    rule: Literal["target_miss_rate", "false_alarm_rate"]
    target: float
    level: float | None = Field(None, description="Per-signal conformal false-alarm level a on successful steps.")
    miss_bound: float | None = None
    bundle: str
    precision: str
    num_samples: int
    chains: int
    seed: int
    calibration: RatesModel
    test: RatesModel | None = None
    auroc: dict[str, float | None] = Field(default_factory=dict)


def write_thresholds_file(report: CalibrationReport, path: Path) -> Path:
    """The file ``confidence.thresholds_file`` points to (its ``thresholds`` map is what the daemon reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(report.model_dump_json(indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_thresholds_to_bundle(bundle_dir: Path, thresholds: Mapping[str, float], *,
                               replace: bool = False) -> tuple[Path, bool]:
    """Put the thresholds in the bundle's manifest (over the ones there, or ``replace``-ing them all: a combined
    score's gate is the whole map); returns the manifest path and whether a signature existed (it no longer
    matches: the manifest is part of what is signed, so the bundle must be signed again)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir / MANIFEST_FILE)
    finite = {k: float(v) for k, v in thresholds.items() if math.isfinite(v)}
    if len(finite) != len(thresholds):
        raise CalibrationError("refusing to write an infinite threshold into the bundle; calibrate with more data")
    merged = finite if replace else {**(manifest.confidence_thresholds or {}), **finite}
    updated = manifest.model_copy(update={"confidence_thresholds": merged})
    path = write_manifest(type(manifest).model_validate(json.loads(updated.model_dump_json())), bundle_dir)
    return path, (bundle_dir / SIGNATURE_FILE).exists()
