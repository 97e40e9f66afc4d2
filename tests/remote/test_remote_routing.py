"""TieredPlanner: local first, the remote tier when the local verdict fails, the operator when both fail; with a
real local PolicyRunner, a real Triton server, the real confidence monitor, console model and metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hil.harness import free_port
from vla_edge.confidence import ChunkContext, select_chunk
from vla_edge.operator.console import ConsoleModel
from vla_edge.operator.escalation import EscalationQueue, TeleopChannel
from vla_edge.policy import PolicyRunner
from vla_edge.remote import RemotePolicyClient
from vla_edge.routing import TieredPlanner, TierMetrics, output_limits
from vla_edge.service import build_monitor
from vla_edge.config import Settings
from prometheus_client import CollectorRegistry, generate_latest
from vla_edge.types import Observation, Verdict

INSTRUCTION = "put the red block in the left bin"
LENIENT = {"spread": np.inf, "consistency": np.inf, "ood": np.inf, "limits": np.inf, "jerk": np.inf}
STRICT = {**LENIENT, "spread": -1.0}  # spread is never negative: every verdict fails


@pytest.fixture(scope="module")
def local(bundle):
    return PolicyRunner(bundle, "fp32", intra_op_threads=1, seed=0)


@pytest.fixture()
def console():
    return ConsoleModel(EscalationQueue(), TeleopChannel())


def _monitor(bundle, thresholds):
    return dataclasses.replace(build_monitor(bundle, Settings()), thresholds=thresholds)


def _planner(bundle, url, model, thresholds, console, metrics, deadline_ms=20_000.0):
    # A deadline only the slow model can miss: a loaded machine must not turn an answer into a "deadline".
    client = RemotePolicyClient(url, model, deadline_ms, output_limits(bundle.manifest), down_after=3)
    return TieredPlanner(client, _monitor(bundle, thresholds), TierMetrics(metrics), console.set_remote_status)


def _route(planner, local, observation, local_passes: bool):
    image, state = observation
    obs = Observation(image, state, INSTRUCTION, 0)
    samples = local.infer(image, state, INSTRUCTION, 4)
    chunk = select_chunk(samples.actions)
    verdict = planner.local_monitor.evaluate(samples, chunk, ChunkContext())
    if not local_passes:
        verdict = Verdict(False, verdict.signals, "low confidence: forced by the test")
    return samples, planner.route(obs, None, 4, samples, chunk, verdict, ChunkContext(), 0.01)


def _values(registry: CollectorRegistry, name: str, *labels: str) -> dict[str, float]:
    """``{"label,label": value}`` of one sample name, read back through prometheus_client's collect()."""
    return {",".join(s.labels[k] for k in labels): s.value
            for family in registry.collect() for s in family.samples if s.name == name}


def _calls(metrics: CollectorRegistry) -> dict[str, float]:
    return _values(metrics, "vla_edge_tier_calls_total", "tier", "outcome")


def test_a_passing_local_verdict_never_calls_the_remote_tier(bundle, local, observation, console):
    metrics = CollectorRegistry()
    # A dead address: any call would fail and show in the metrics and the console.
    planner = _planner(bundle, f"127.0.0.1:{free_port()}", "vla_remote", LENIENT, console, metrics)
    samples, routed = _route(planner, local, observation, local_passes=True)
    assert routed.tier == "local" and routed.samples is samples and routed.remote_outcome is None
    assert _calls(metrics) == {"local,pass": 1.0}
    assert console.state().remote == "ok"


def test_a_failed_local_verdict_goes_to_the_remote_tier_and_its_chunk_is_used(
        triton_server, bundle, local, observation, console):
    metrics = CollectorRegistry()
    planner = _planner(bundle, triton_server.url, "vla_remote", LENIENT, console, metrics)
    samples, routed = _route(planner, local, observation, local_passes=False)
    assert routed.tier == "remote" and routed.remote_outcome == "pass"
    assert routed.verdict.passed
    assert routed.samples is not samples and routed.samples.actions.shape == samples.actions.shape
    np.testing.assert_array_equal(routed.chunk, select_chunk(routed.samples.actions))
    assert "remote" in routed.samples.timings_ms
    assert _calls(metrics) == {"local,fail": 1.0, "remote,pass": 1.0}
    assert _values(metrics, "vla_edge_tier_latency_seconds_count", "tier") == {"remote": 1.0, "local": 1.0}
    assert console.state().remote == "ok"


def test_a_chunk_both_tiers_doubt_escalates_with_both_reasons(triton_server, bundle, local, observation, console):
    metrics = CollectorRegistry()
    planner = _planner(bundle, triton_server.url, "vla_remote", STRICT, console, metrics)
    _, routed = _route(planner, local, observation, local_passes=False)
    assert routed.tier == "operator" and routed.remote_outcome == "fail"
    assert not routed.verdict.passed
    assert "forced by the test" in routed.verdict.reason and "remote low confidence: spread" in routed.verdict.reason
    assert _values(metrics, "vla_edge_tier_decisions_total", "tier") == {"operator": 1.0}


@pytest.mark.parametrize(("model", "kind"), [
    ("down", "unavailable"), ("vla_slow", "deadline"), ("vla_wrong_shape", "malformed"), ("vla_nan", "malformed"),
])
def test_remote_faults_keep_the_local_result_and_show_the_tier_degraded(
        triton_server, bundle, local, observation, console, model, kind):
    metrics = CollectorRegistry()
    url = f"127.0.0.1:{free_port()}" if model == "down" else triton_server.url
    # 250 ms only where the deadline is the point (vla_slow answers after 0.6 s, however idle the machine).
    planner = _planner(bundle, url, "vla_remote" if model == "down" else model, LENIENT, console, metrics,
                       deadline_ms=250.0 if kind == "deadline" else 20_000.0)
    samples, routed = _route(planner, local, observation, local_passes=False)
    # The local result stands (its failed verdict escalates as without a remote tier); nothing remote is used.
    assert routed.tier == "operator" and routed.remote_outcome == kind
    assert routed.samples is samples and not routed.verdict.passed
    assert f"remote tier {kind}" in routed.verdict.reason
    assert console.state().remote.startswith("degraded")
    assert _calls(metrics) == {"local,fail": 1.0, f"remote,{kind}": 1.0}
    assert metrics.get_sample_value("vla_edge_remote_tier_up") == 0.5
    # And the next routine chunk runs locally as before, without touching the remote tier.
    _, again = _route(planner, local, observation, local_passes=True)
    assert again.tier == "local"
    assert _calls(metrics)["local,pass"] == 1.0 and _calls(metrics)[f"remote,{kind}"] == 1.0


def test_a_down_tier_is_skipped_during_backoff_and_the_console_says_so(bundle, local, observation, console):
    metrics = CollectorRegistry()
    client = RemotePolicyClient(f"127.0.0.1:{free_port()}", "vla_remote", 250.0, output_limits(bundle.manifest),
                                down_after=1, backoff_initial_s=30.0)
    planner = TieredPlanner(client, _monitor(bundle, LENIENT), TierMetrics(metrics), console.set_remote_status)
    _route(planner, local, observation, local_passes=False)
    _, routed = _route(planner, local, observation, local_passes=False)
    assert routed.remote_outcome == "backoff"
    assert console.state().remote.startswith("degraded (down)") and "next try in" in console.state().remote
    assert metrics.get_sample_value("vla_edge_remote_tier_up") == 0.0
    assert "vla_edge_tier_calls_total" in generate_latest(metrics).decode()
