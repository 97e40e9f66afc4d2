"""A real Prometheus (Debian's package) scrapes the daemon during a demo run; what its HTTP API answers matches
what the daemon did, as the daemon's own counters (the scheduler's, the task runner's) tell it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vla_edge.telemetry.metrics import LATENCY_BUCKETS_S

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def run(demo_run):
    if demo_run.prometheus is None:
        pytest.skip("needs Debian's prometheus package (scripts/dev-setup.sh installs it)")
    return demo_run


def prometheus_quantile(q: float, values_s: list[float]) -> float:
    """What ``histogram_quantile`` gives for these values in the daemon's buckets (Prometheus's interpolation)."""
    bounds = [*LATENCY_BUCKETS_S, math.inf]
    cumulative = [sum(1 for v in values_s if v <= b) for b in bounds]
    rank = q * len(values_s)
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if math.isinf(bounds[b]):
        return bounds[-2]
    lower, below = (0.0, 0) if b == 0 else (bounds[b - 1], cumulative[b - 1])
    return lower + (bounds[b] - lower) * (rank - below) / (cumulative[b] - below)


def test_chunk_latency_quantiles_match_the_daemons_own_latencies(run):
    latencies_s = [ms / 1000.0 for ms in run.counters.latencies_ms]
    assert len(latencies_s) >= 5, "too few chunks to speak of quantiles"
    count = run.prometheus.scalar('vla_edge_stage_latency_seconds_count{job="vla-edge",stage="plan"}')
    assert count == len(latencies_s)
    for q in (0.5, 0.9, 0.99):
        got = run.prometheus.scalar(
            f'histogram_quantile({q}, sum by (le) (vla_edge_stage_latency_seconds_bucket{{job="vla-edge",stage="plan"}}))')
        assert got == pytest.approx(prometheus_quantile(q, latencies_s), rel=1e-6), q
    total = run.prometheus.scalar('vla_edge_stage_latency_seconds_sum{job="vla-edge",stage="plan"}')
    assert total == pytest.approx(sum(latencies_s), rel=1e-6)
    print(f"\nchunk latency p50 {np.median(run.counters.latencies_ms):.1f} ms over {len(latencies_s)} chunks")


def test_hold_ticks_by_reason_and_actions_match_the_scheduler(run):
    ticks = run.prometheus.by_label('vla_edge_ticks_total{job="vla-edge"}', "outcome")
    assert ticks.get("action") == run.counters.actions_sent
    # Holds the executor decides before asking the scheduler (blind camera, lost controller, a command the
    # controller refused: the last two happen on a loaded machine) are not the scheduler's.
    executor_holds = ("hold_camera", "hold_controller_lost", "hold_replan_after_refusal")
    scheduler_holds = {k: v for k, v in ticks.items() if k.startswith("hold_") and not k.startswith(executor_holds)}
    assert sum(scheduler_holds.values()) == run.counters.holds
    # A refused chunk is re-sampled first (recovery.resample_tries); only a refusal that used up the re-samples
    # holds the arm for low confidence.
    assert scheduler_holds.get("hold_low_confidence", 0) >= run.counters.escalations
    # Every outcome Prometheus has is the one the daemon's registry has.
    assert ticks == {k: v for k, v in run.metrics.by_label(run.metrics.ticks, "outcome").items()}


def test_confidence_signals_and_verdicts_match(run):
    scores = run.prometheus.by_label('vla_edge_confidence_score{job="vla-edge"}', "signal")
    thresholds = run.prometheus.by_label('vla_edge_confidence_threshold{job="vla-edge"}', "signal")
    assert set(scores) == set(thresholds) and set(scores) >= {"spread", "ood"}
    assert scores == pytest.approx(run.metrics.by_label(run.metrics.confidence, "signal"))
    for signal, value in thresholds.items():
        assert value == pytest.approx(run.thresholds.get(signal, math.inf)), signal
    verdicts = run.prometheus.by_label('vla_edge_verdicts_total{job="vla-edge"}', "result")
    assert verdicts.get("pass", 0) == run.counters.chunks_accepted
    assert verdicts.get("fail", 0) == run.counters.chunks_rejected
    assert run.prometheus.scalar('vla_edge_chunks_total{job="vla-edge"}') == \
        run.counters.chunks_accepted + run.counters.chunks_rejected


def test_escalations_match_the_task_runner(run):
    escalations = run.prometheus.by_label('vla_edge_escalations_total{job="vla-edge"}', "reason")
    assert sum(escalations.values()) == run.result.counters.get("escalations", 0) >= 1
    assert escalations.get("verify", 0) >= 1  # the checkpoint verification of this task
    assert escalations.get("low_confidence", 0) == run.counters.escalations
    # Every refusal was either recovered by a re-sample, escalated, or was still being re-sampled at the end.
    assert run.counters.recovered + run.counters.escalations <= run.counters.chunks_rejected
    recoveries = run.prometheus.by_label('vla_edge_recoveries_total{job="vla-edge",kind="resample"}', "outcome")
    assert recoveries.get("accepted", 0) == run.counters.recovered
    assert sum(recoveries.values()) <= run.counters.resamples


def test_every_dashboard_query_runs_on_prometheus_and_the_core_panels_have_data(run):
    import json
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" /
                            "vla-edge-dashboard.json").read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$robot", ".*").replace("$__rate_interval", "1m")
            result = run.prometheus.query(expr)  # a query Prometheus cannot parse fails here (HTTP 400)
            if not result:
                empty.append(panel["title"])
    # Only what this run cannot have is empty: no remote tier, no board temperature sensors in every VM.
    allowed = {"Remote tier up", "Temperature and throttling"}
    if run.counters.chunks_rejected == 0:
        allowed.add("Refused chunks (5 min)")
    assert set(empty) <= allowed, empty
