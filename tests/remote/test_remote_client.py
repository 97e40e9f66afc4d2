"""RemotePolicyClient against a real Triton server (PyTriton): answers, the contract checks, and faults."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hil.harness import free_port
from vla_edge.confidence import EmbeddingStats, ood_score
from vla_edge.policy import PolicyRunner
from vla_edge.remote import (
    OutputLimits,
    RemoteChunk,
    RemoteFailure,
    RemotePolicyClient,
    RemoteRequest,
    validate_outputs,
)
from vla_edge.routing import output_limits

INSTRUCTION = "put the red block in the left bin"
LIMITS = OutputLimits(8, 4, np.zeros(4, np.float32), np.ones(4, np.float32))


def _client(url: str, model: str = "vla_remote", deadline_ms: float = 2000.0, **kwargs) -> RemotePolicyClient:
    return RemotePolicyClient(url, model, deadline_ms, LIMITS, **kwargs)


def _request(observation, k: int = 4, prefix=None, seed: int = 5, instruction: str = INSTRUCTION) -> RemoteRequest:
    image, state = observation
    return RemoteRequest(image, state, instruction, k, prefix, seed)


# -- the contract, with arrays ---------------------------------------------------------------------------------

def test_validate_accepts_a_good_answer_and_names_each_defect():
    good = np.full((2, 8, 4), 0.5, np.float32)
    z = np.zeros(16, np.float32)
    assert isinstance(validate_outputs(good, z, 2, LIMITS), tuple)
    assert "shape" in validate_outputs(good[:, :7], z, 2, LIMITS)
    assert "shape" in validate_outputs(good, z, 3, LIMITS)
    assert "float32" in validate_outputs(good.astype(np.float64), z, 2, LIMITS)
    nan = good.copy()
    nan[1, 2, 3] = np.nan
    assert "non-finite" in validate_outputs(nan, z, 2, LIMITS)
    outside = good.copy()
    outside[0, 0, 0] = 1.5
    assert "limits" in validate_outputs(outside, z, 2, LIMITS)
    assert "embedding" in validate_outputs(good, np.array([np.inf], np.float32), 2, LIMITS)
    assert "no 'actions'" in validate_outputs(None, z, 2, LIMITS)


# -- a real server -------------------------------------------------------------------------------------------

def test_remote_answer_is_the_bundle_policy_on_the_same_noise(triton_server, observation):
    """The server runs the bundle: same seed → the same chunks a local PolicyRunner samples from that noise,
    and the whitened embedding gives the same Mahalanobis OOD score as the bundle's full statistics."""
    client = RemotePolicyClient(triton_server.url, "vla_remote", 2000.0, output_limits(triton_server.bundle.manifest))
    answer = client.infer(_request(observation, k=4, seed=123))
    assert isinstance(answer, RemoteChunk), answer
    assert client.health.state == "ok"
    m = triton_server.bundle.manifest
    runner = PolicyRunner(triton_server.bundle, "fp32", intra_op_threads=1)
    runner.set_instruction(INSTRUCTION)
    noise = np.random.default_rng(123).standard_normal((4, m.horizon, m.action_dim), dtype=np.float32)
    local = runner.sample(runner.encode(*observation), 4, None, noise)
    np.testing.assert_allclose(answer.actions, local.actions, atol=2e-4)
    stats = m.embedding_stats
    full = EmbeddingStats(np.asarray(stats.mean), np.asarray(stats.std), np.asarray(stats.precision))
    whitened = EmbeddingStats(np.zeros(1), np.ones(1))
    assert ood_score(answer.embedding_whitened, whitened) == pytest.approx(ood_score(local.embedding, full), rel=1e-3)
    client.close()


def test_committed_prefix_comes_back_unchanged(triton_server, observation):
    client = _client(triton_server.url)
    prefix = np.array([[0.3, 0.4, 0.0, 0.0], [0.31, 0.41, 0.0, 0.0]], np.float32)
    answer = client.infer(_request(observation, k=3, prefix=prefix))
    assert isinstance(answer, RemoteChunk), answer
    np.testing.assert_allclose(answer.actions[:, :2], np.broadcast_to(prefix, (3, 2, 4)), atol=1e-5)


def test_a_request_the_server_refuses_is_rejected_with_its_reason_and_health_stays_ok(triton_server, observation):
    client = _client(triton_server.url)
    answer = client.infer(_request(observation, instruction="put the zebra block in the left bin"))
    assert isinstance(answer, RemoteFailure)
    assert answer.kind == "rejected" and "zebra" in answer.detail
    assert "Traceback" not in answer.detail
    assert client.health.state == "ok"


# -- faults ---------------------------------------------------------------------------------------------------

def test_server_down_fails_fast_then_backs_off_without_calling(observation):
    client = _client(f"127.0.0.1:{free_port()}", deadline_ms=500.0, down_after=2, backoff_initial_s=30.0)
    first = client.infer(_request(observation))
    assert isinstance(first, RemoteFailure) and first.kind == "unavailable", first
    assert first.latency_ms < 500.0
    assert client.health.state == "degraded"
    second = client.infer(_request(observation))
    assert isinstance(second, RemoteFailure) and second.kind == "unavailable"
    health = client.health
    assert health.state == "down" and health.retry_in_s > 25
    assert health.describe().startswith("degraded")
    started = time.monotonic()
    third = client.infer(_request(observation))
    assert isinstance(third, RemoteFailure) and third.kind == "backoff"
    assert time.monotonic() - started < 0.05  # no network call while backing off


def test_a_slow_answer_is_discarded_at_the_deadline(triton_server, observation):
    client = _client(triton_server.url, "vla_slow", deadline_ms=200.0)
    started = time.monotonic()
    answer = client.infer(_request(observation))
    waited = time.monotonic() - started
    assert isinstance(answer, RemoteFailure) and answer.kind == "deadline", answer
    assert 0.15 < waited < 0.5  # the deadline, not the server's 0.6 s
    assert client.health.state == "degraded"


@pytest.mark.parametrize(("model", "words"), [("vla_wrong_shape", "shape"), ("vla_nan", "non-finite")])
def test_malformed_answers_are_rejected(triton_server, observation, model, words):
    client = _client(triton_server.url, model)
    answer = client.infer(_request(observation))
    assert isinstance(answer, RemoteFailure) and answer.kind == "malformed", answer
    assert words in answer.detail
    assert client.health.state == "degraded"


def test_one_good_answer_after_failures_makes_the_tier_ok_again(triton_server, observation):
    bad = _client(triton_server.url, "vla_nan", down_after=5)
    assert isinstance(bad.infer(_request(observation)), RemoteFailure)
    bad.model_name = "vla_remote"  # the server recovered
    assert isinstance(bad.infer(_request(observation)), RemoteChunk)
    assert bad.health.state == "ok" and bad.health.describe() == "ok"
