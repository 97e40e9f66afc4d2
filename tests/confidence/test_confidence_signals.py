import numpy as np
import pytest

from vla_edge.confidence import (
    ActionBounds,
    ChunkContext,
    ConfidenceMonitor,
    EmbeddingStats,
    consistency_score,
    jerk_score,
    limits_score,
    ood_score,
    select_chunk,
    spread_score,
)
from vla_edge.types import ChunkSamples

BOUNDS = ActionBounds(np.zeros(4), np.ones(4), np.array([0.08, 0.08, np.inf, np.inf]))


def _samples(actions, embedding=None):
    return ChunkSamples(np.asarray(actions, np.float32), np.zeros(8) if embedding is None else embedding, 0)


def _line(start, step, h=8):
    xs = start + step * np.arange(h)
    return np.stack([xs, xs, np.zeros(h), np.zeros(h)], axis=1)


def test_spread_grows_with_disagreement():
    rng = np.random.default_rng(0)
    base = _line(0.2, 0.02)
    tight = base + rng.normal(0, 0.001, (8, 8, 4))
    loose = base + rng.normal(0, 0.05, (8, 8, 4))
    assert spread_score(tight, BOUNDS) < 0.005 < spread_score(loose, BOUNDS)


def test_consistency_detects_a_change_of_mind():
    rng = np.random.default_rng(1)
    previous = _samples(_line(0.2, 0.02) + rng.normal(0, 0.005, (8, 8, 4)))
    agrees = _samples(_line(0.28, 0.02) + rng.normal(0, 0.005, (8, 8, 4)))  # shifted by 4 ticks
    disagrees = _samples(_line(0.7, -0.02) + rng.normal(0, 0.005, (8, 8, 4)))
    context = ChunkContext(previous=previous, previous_start_tick=0, start_tick=4)
    assert consistency_score(agrees, context, BOUNDS) < consistency_score(disagrees, context, BOUNDS)
    assert consistency_score(agrees, ChunkContext(), BOUNDS) == 0.0


def test_ood_scores_distance_in_standard_deviations():
    stats = EmbeddingStats(np.zeros(8), np.ones(8))
    assert ood_score(np.zeros(8), stats) == pytest.approx(0.0)
    assert ood_score(np.full(8, 3.0), stats) == pytest.approx(3.0)


def test_limits_and_non_finite():
    inside = _line(0.1, 0.05)
    assert limits_score(inside, BOUNDS) == 0.0
    outside = inside.copy()
    outside[3, 0] = 1.2
    assert limits_score(outside, BOUNDS) == pytest.approx(0.2)
    outside[2, 1] = np.nan
    assert limits_score(outside, BOUNDS) == float("inf")


def test_jerk_includes_the_junction_with_the_last_action():
    chunk = _line(0.5, 0.02)
    assert jerk_score(chunk, BOUNDS, np.array([0.5, 0.5, 0, 0])) == pytest.approx(0.25, rel=1e-5)
    assert jerk_score(chunk, BOUNDS, np.array([0.1, 0.1, 0, 0])) == pytest.approx(0.4 / 0.08)


def test_select_chunk_is_a_real_sample():
    rng = np.random.default_rng(2)
    actions = rng.normal(size=(5, 8, 4))
    chosen = select_chunk(actions)
    assert any(np.array_equal(chosen, a) for a in actions)


def test_monitor_fails_closed_and_says_why():
    monitor = ConfidenceMonitor(BOUNDS, EmbeddingStats(np.zeros(8), np.ones(8)), {"spread": 0.01, "ood": 2.0, "limits": 0.0, "jerk": 1.05, "consistency": 0.5})
    good = _samples(np.repeat(_line(0.2, 0.02)[None], 8, axis=0))
    verdict = monitor.evaluate(good, good.actions[0], ChunkContext())
    assert verdict.passed and verdict.reason == ""
    far = _samples(good.actions, embedding=np.full(8, 5.0))
    verdict = monitor.evaluate(far, far.actions[0], ChunkContext())
    assert not verdict.passed and "ood" in verdict.reason
    assert {s.name for s in verdict.signals} == {"spread", "consistency", "ood", "limits", "jerk"}


def test_one_sample_has_no_spread_signal():
    """single_pass policies (ACT) give K = 1: spread does not apply and cannot refuse; the others still do."""
    monitor = ConfidenceMonitor(BOUNDS, None, {"spread": 0.0, "limits": 0.0, "jerk": 1.05, "consistency": 0.5})
    one = _samples(_line(0.2, 0.02)[None])
    verdict = monitor.evaluate(one, one.actions[0], ChunkContext())
    assert verdict.passed and {s.name for s in verdict.signals} == {"consistency", "limits", "jerk"}
    jumpy = _samples(_line(0.2, 0.5)[None])
    assert not monitor.evaluate(jumpy, jumpy.actions[0], ChunkContext()).passed
