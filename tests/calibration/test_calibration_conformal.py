"""Calibration on synthetic arrays: the conformal quantile, its coverage, risk control on misses, AUROC."""

import itertools
import json
import shutil

import numpy as np
import pytest

from vla_edge.calibration import (
    LEVEL_GRID,
    CalibrationError,
    StepScores,
    auroc,
    calibrate_false_alarm,
    calibrate_miss_rate,
    conformal_threshold,
    flagged,
    rates,
    write_thresholds_to_bundle,
)
from vla_edge.paths import REFERENCE_BUNDLE_DIR


def test_conformal_threshold_is_the_promised_order_statistic():
    scores = np.arange(1.0, 100.0)  # 99 scores: 1..99, shuffled below
    rng = np.random.default_rng(0)
    rng.shuffle(scores)
    assert conformal_threshold(scores, 0.05) == 95.0  # ceil(100 * 0.95) = 95th smallest
    assert conformal_threshold(scores, 0.10) == 90.0
    assert conformal_threshold(scores, 0.01) == 99.0  # rank 99 = the largest
    assert conformal_threshold(scores[:9], 0.05) == float("inf")  # ceil(10 * 0.95) = 10 > 9 scores
    with pytest.raises(ValueError):
        conformal_threshold(scores, 0.0)


def test_split_conformal_keeps_its_false_alarm_promise_on_new_good_steps():
    # Over many independent calibration sets, the flagged share of new good steps averages between a - 1/(n+1)
    # and a: the guarantee is tight, not just an upper bound.
    rng = np.random.default_rng(1)
    level, n, trials = 0.1, 49, 3000
    calibration = rng.gamma(2.0, 1.0, size=(trials, n))
    fresh = rng.gamma(2.0, 1.0, size=trials)
    thresholds = np.array([conformal_threshold(row, level) for row in calibration])
    false_alarm = float(np.mean(fresh > thresholds))
    assert level - 1.0 / (n + 1) - 0.02 <= false_alarm <= level + 0.02


def _synthetic(rng, n_good, n_bad, shift=2.5):
    # Only spread separates the classes; the other two signals are noise the calibration must not lean on.
    good = {name: rng.normal(0, 1, n_good) for name in ("spread", "consistency", "ood")}
    bad = {"spread": rng.normal(shift, 1, n_bad), "consistency": rng.normal(0, 1, n_bad), "ood": rng.normal(0, 1, n_bad)}
    values = {k: np.concatenate([good[k], bad[k]]) for k in good}
    return StepScores(values, np.concatenate([np.zeros(n_good, bool), np.ones(n_bad, bool)]))


def test_risk_control_meets_the_target_miss_rate_on_held_out_failures():
    rng = np.random.default_rng(2)
    target, misses, alarms = 0.2, [], []
    for _ in range(200):
        fit, test = _synthetic(rng, 300, 40), _synthetic(rng, 300, 400)
        result = calibrate_miss_rate(fit, target)
        assert result.miss_bound is not None and result.miss_bound <= target
        assert set(result.thresholds) == {"spread", "consistency", "ood"}
        measured = rates(test, result.thresholds)
        misses.append(measured.miss)
        alarms.append(measured.false_alarm)
    assert np.mean(misses) <= target + 0.01
    # It spends no more false alarms than needed: a looser gate would also have met the target.
    assert np.mean(alarms) < 0.6


def test_calibration_refuses_too_little_data_and_says_how_much_it_needs():
    rng = np.random.default_rng(3)
    with pytest.raises(CalibrationError, match="needs at least 19 failed"):
        calibrate_miss_rate(_synthetic(rng, 100, 5), 0.05)
    with pytest.raises(CalibrationError, match="no successful"):
        calibrate_miss_rate(_synthetic(rng, 0, 50), 0.2)
    with pytest.raises(CalibrationError, match="do not separate"):
        calibrate_miss_rate(_synthetic(rng, 200, 200, shift=0.0), 0.05)
    result = calibrate_false_alarm(_synthetic(rng, 99, 0), 0.05)
    assert result.rule == "false_alarm_rate" and all(np.isfinite(list(result.thresholds.values())))


def test_flagged_uses_the_monitors_comparison():
    scores = StepScores({"spread": np.array([1.0, 2.0, 3.0])}, np.array([False, False, True]))
    assert flagged(scores, {"spread": 2.0}).tolist() == [False, False, True]  # value == threshold passes
    r = rates(scores, {"spread": 2.0})
    assert (r.false_alarm, r.miss, r.n_success, r.n_failed) == (0.0, 0.0, 2, 1)


def _auroc_pairs(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_on_known_cases():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 0, 1, 1], bool)) == 1.0
    assert auroc(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 1, 0, 0], bool)) == 0.0
    assert auroc(np.zeros(6), np.array([0, 1, 0, 1, 0, 1], bool)) == 0.5
    assert np.isnan(auroc(np.arange(3.0), np.zeros(3, bool)))
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.3
    assert auroc(scores, labels) == pytest.approx(_auroc_pairs(scores, labels))
    with_inf = np.array([np.inf, 1.0, 0.5, 2.0])
    assert auroc(with_inf, np.array([1, 0, 0, 1], bool)) == 1.0


def test_thresholds_written_into_a_manifest_reach_the_daemons_monitor(tmp_path):
    from vla_edge.bundle import load_bundle
    from vla_edge.config import Settings
    from vla_edge.service import build_monitor

    shutil.copy(REFERENCE_BUNDLE_DIR / "manifest.json", tmp_path / "manifest.json")
    (tmp_path / "signature.json").write_text("{}")
    path, was_signed = write_thresholds_to_bundle(tmp_path, {"spread": 0.031, "consistency": 0.2, "ood": 3.5})
    assert was_signed and path == tmp_path / "manifest.json"
    assert json.loads(path.read_text())["confidence_thresholds"]["spread"] == 0.031
    monitor = build_monitor(load_bundle(tmp_path, verify=False), Settings())
    assert monitor.thresholds["spread"] == 0.031 and monitor.thresholds["ood"] == 3.5
    assert monitor.embedding_stats.precision is not None
    with pytest.raises(CalibrationError, match="infinite"):
        write_thresholds_to_bundle(tmp_path, {"spread": float("inf")})


def test_fixed_signals_count_as_part_of_the_gate():
    rng = np.random.default_rng(5)
    scores = _synthetic(rng, 300, 60, shift=0.0)  # the calibrated signals cannot tell failures apart...
    jerk = np.concatenate([rng.uniform(0.2, 0.9, 300), rng.uniform(1.2, 2.0, 60)])  # ...but jerk flags them all
    scores = StepScores({**scores.values, "jerk": jerk}, scores.failed)
    with pytest.raises(CalibrationError):
        calibrate_miss_rate(scores, 0.05)
    result = calibrate_miss_rate(scores, 0.05, fixed={"jerk": 1.05})
    assert "jerk" not in result.thresholds  # not fitted, only counted
    assert result.calibration.miss == 0.0
    assert result.level == LEVEL_GRID[LEVEL_GRID >= 1.0 / 301].min()  # the least alarming level offered
    assert result.calibration.false_alarm < 0.02


def test_a_fitted_jerk_threshold_never_goes_below_the_speed_limit():
    rng = np.random.default_rng(6)
    scores = StepScores({"jerk": rng.uniform(0.2, 0.9, 200)}, np.zeros(200, bool))  # a very smooth policy
    result = calibrate_false_alarm(scores, 0.05, signals=("jerk",))
    assert result.thresholds["jerk"] == 1.05


def test_a_signal_that_does_not_rank_failures_higher_is_not_fitted():
    from vla_edge.calibration import StepScores, calibrate_miss_rate

    rng = np.random.default_rng(4)
    failed = np.array([False] * 200 + [True] * 60)
    informative = np.concatenate([rng.normal(0.0, 1.0, 200), rng.normal(3.0, 1.0, 60)])
    inverted = np.concatenate([rng.normal(3.0, 1.0, 200), rng.normal(0.0, 1.0, 60)])  # high on good steps
    scores = StepScores({"consistency": informative, "spread": inverted}, failed)
    result = calibrate_miss_rate(scores, 0.2, signals=("consistency", "spread"))
    # The inverted signal stays only as an outlier check beyond every calibration value; the other is fitted.
    assert result.thresholds["spread"] == inverted.max()
    assert result.thresholds["consistency"] < informative.max()
    assert result.calibration.false_alarm < 0.5


# -- the combined failure score (issue 14 item 4) ----------------------------------------------------------------


def _chunk_steps(n=2000, seed=0, fail_rate=0.05):
    """Steps of 3-7 chunks. Failing steps: consistency jumps on their last chunk; spread is *lower* (like the
    reference policy's, AUROC < 0.5); ood is noise."""
    from vla_edge.calibration import ChunkSteps

    rng = np.random.default_rng(seed)
    chunks, failed = [], []
    for _ in range(n):
        fails = rng.random() < fail_rate
        k = int(rng.integers(3, 8))
        step = []
        for j in range(k):
            step.append({
                "consistency": 0.0 if j == 0 else float(np.exp(rng.normal(1.5 if fails and j == k - 1 else 0.0, 0.4))),
                "spread": float(np.exp(rng.normal(-3.0 - (0.6 if fails else 0.0), 0.3))),
                "ood": float(np.exp(rng.normal(0.0, 0.3))),
                "jerk": float(abs(rng.normal(0.7, 0.1))),
                "limits": 0.0,
            })
        chunks.append(step)
        failed.append(fails)
    return ChunkSteps(chunks, np.array(failed))


def test_the_failure_score_keeps_what_predicts_failure_and_meets_its_target_on_new_steps():
    from vla_edge.calibration import fit_failure_score, gate_flags, precision_recall
    from vla_edge.confidence import FailureScore

    fit = fit_failure_score(_chunk_steps(seed=1), 0.2, fixed={"limits": 0.0})
    assert fit.score.weights["consistency"] > 0
    assert "spread" not in fit.score.weights, "a signal that is lower on failures must not count as risk"
    assert fit.level_bound <= 0.2 and all(np.isfinite(v) for v in fit.thresholds.values())
    assert FailureScore.from_thresholds(fit.thresholds) == fit.score  # the map carries the whole score
    test = _chunk_steps(seed=2)
    precision, recall = precision_recall(gate_flags(test, fit.thresholds), test.failed)
    assert recall >= 0.7 and precision > 0.3


def test_a_monitor_with_a_failure_score_refuses_by_it():
    from vla_edge.confidence import SCORE, ActionBounds, ChunkContext, ConfidenceMonitor, FailureScore
    from vla_edge.types import ChunkSamples

    score = FailureScore({"spread": 2.0}, {"spread": 0.01}, bias=-6.0, threshold=0.5)
    bounds = ActionBounds(np.zeros(2), np.ones(2), np.full(2, np.inf))
    monitor = ConfidenceMonitor(bounds, None, {"limits": 0.0, **score.to_thresholds()})
    calm = np.full((4, 8, 2), 0.5, np.float32)
    wild = calm + np.random.default_rng(0).normal(0, 0.3, calm.shape).astype(np.float32)
    for actions, passes in ((calm, True), (np.clip(wild, 0, 1), False)):
        verdict = monitor.evaluate(ChunkSamples(actions, np.zeros(3), 0), actions[0], ChunkContext())
        assert verdict.passed is passes
        assert verdict.score[SCORE] == pytest.approx(score.probability(verdict.score))
    assert "failure_score" in monitor.evaluate(ChunkSamples(np.clip(wild, 0, 1), np.zeros(3), 0), wild[0],
                                               ChunkContext()).reason


def test_the_failure_score_refuses_with_too_few_failures():
    from vla_edge.calibration import fit_failure_score

    with pytest.raises(CalibrationError, match="needs at least 19 failed"):
        fit_failure_score(_chunk_steps(n=100, fail_rate=0.02), 0.05)
