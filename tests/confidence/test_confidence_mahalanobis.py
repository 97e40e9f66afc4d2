"""The OOD signal with the bundle's full precision matrix: a true Mahalanobis distance (per sqrt(dim))."""

import numpy as np
import pytest

from vla_edge.confidence import EmbeddingStats, ood_score


def _correlated_stats(rho=0.95):
    covariance = np.array([[1.0, rho], [rho, 1.0]])
    return EmbeddingStats(np.zeros(2), np.ones(2), np.linalg.inv(covariance))


def test_a_point_along_the_correlation_is_less_unusual_than_one_across_it():
    stats = _correlated_stats()
    along, across = np.array([1.0, 1.0]), np.array([1.0, -1.0])
    diagonal = EmbeddingStats(stats.mean, stats.std)
    # The diagonal score cannot tell them apart; the full precision matrix can.
    assert ood_score(along, diagonal) == pytest.approx(ood_score(across, diagonal))
    assert ood_score(along, stats) < 1.0 < 4.0 < ood_score(across, stats)
    expected = np.sqrt(across @ stats.precision @ across / 2)
    assert ood_score(across, stats) == pytest.approx(expected)


def test_identity_precision_matches_the_rms_z_score():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=8), rng.uniform(0.5, 2.0, size=8)
    x = rng.normal(size=8)
    full = EmbeddingStats(mean, std, np.diag(1.0 / std**2))
    assert ood_score(x, full) == pytest.approx(ood_score(x, EmbeddingStats(mean, std)))


def test_non_finite_embeddings_are_maximally_out_of_distribution():
    stats = _correlated_stats()
    assert ood_score(np.array([np.nan, 0.0]), stats) == float("inf")
    assert ood_score(np.array([np.inf, 0.0]), EmbeddingStats(np.zeros(2), np.ones(2))) == float("inf")
