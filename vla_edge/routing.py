"""Confidence routing across tiers: the local policy first, the remote (larger) policy when the local verdict
fails, the human operator when the remote verdict fails too.

Routine chunks never leave the board; only doubtful ones cost a network round trip, and only chunks both
models doubt cost an operator's attention. The remote tier can only help: when it is down, slow or returns
nonsense, the local result stands (its failed verdict then escalates exactly as without a remote tier), and
the console shows the tier as degraded.

`TieredPlanner.route` runs in the inference worker thread (`vla_edge.executor.PolicyStepExecutor._plan`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from vla_edge.bundle import BundleManifest
from vla_edge.confidence import ChunkContext, ConfidenceMonitor, EmbeddingStats, select_chunk
from vla_edge.remote import OutputLimits, RemoteChunk, RemotePolicyClient, RemoteRequest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from vla_edge.types import ChunkSamples, Observation, Verdict

log = logging.getLogger(__name__)

Tier = Literal["local", "remote", "operator"]

# Per-call latencies span a few ms (local on a desktop) to a remote deadline of hundreds of ms.
TIER_LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


@dataclass(frozen=True)
class RoutedChunk:
    """The chunk a tier settled on. ``tier == "operator"``: no tier passed; the verdict fails and escalates."""

    samples: ChunkSamples
    chunk: np.ndarray
    verdict: Verdict
    tier: Tier
    remote_outcome: str | None = None  # "pass", "fail", or the failure kind; None when not asked


class TierMetrics:
    """Per-tier calls, outcomes and latencies, registered on the daemon's metrics registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "vla_edge_tier_calls", "Chunks planned by each policy tier, by outcome.", ["tier", "outcome"],
            registry=registry)
        self.latency = Histogram(
            "vla_edge_tier_latency_seconds", "Latency of one call to a policy tier.", ["tier"],
            buckets=TIER_LATENCY_BUCKETS_S, registry=registry)
        self.decisions = Counter(
            "vla_edge_tier_decisions", "Which tier each chunk was settled by (operator = escalated).", ["tier"],
            registry=registry)
        self.remote_state = Gauge(
            "vla_edge_remote_tier_up", "Remote tier health: 1 ok, 0.5 degraded, 0 down.", registry=registry)

    def record(self, tier: str, outcome: str, seconds: float | None) -> None:
        self.calls.labels(tier, outcome).inc()
        if seconds is not None:
            self.latency.labels(tier).observe(seconds)


_STATE_VALUE = {"ok": 1.0, "degraded": 0.5, "down": 0.0}


class TieredPlanner:
    """Decides, per planned chunk, which tier's samples the scheduler gets."""

    def __init__(
        self,
        remote: RemotePolicyClient,
        monitor: ConfidenceMonitor,
        metrics: TierMetrics | None = None,
        on_status: Callable[[str], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.remote = remote
        self.local_monitor = monitor
        # The server whitens its embedding with its own training statistics (``embedding_whitened``), so the
        # remote verdict scores it against N(0, I): the same Mahalanobis score, with the same thresholds.
        self.remote_monitor = replace(monitor, embedding_stats=EmbeddingStats(np.zeros(1), np.ones(1)))
        self.metrics = metrics
        self._on_status = on_status or (lambda text: None)
        self._seed = seed
        self._calls = 0
        self._last_status: str | None = None
        self._publish_status()

    def route(
        self,
        observation: Observation,
        prefix: np.ndarray | None,
        num_samples: int,
        local: ChunkSamples,
        local_chunk: np.ndarray,
        local_verdict: Verdict,
        context: ChunkContext,
        local_seconds: float,
    ) -> RoutedChunk:
        self._record("local", "pass" if local_verdict.passed else "fail", local_seconds)
        if local_verdict.passed:
            return self._decided(RoutedChunk(local, local_chunk, local_verdict, "local"))
        self._calls += 1
        answer = self.remote.infer(RemoteRequest(
            observation.image, observation.state, observation.instruction, num_samples, prefix,
            seed=self._seed + self._calls,
        ))
        self._publish_status()
        if not isinstance(answer, RemoteChunk):
            seconds = answer.latency_ms / 1e3 if answer.kind != "backoff" else None
            self._record("remote", answer.kind, seconds)
            verdict = replace(local_verdict, reason=f"{local_verdict.reason}; remote tier {answer.describe()}")
            return self._decided(RoutedChunk(local, local_chunk, verdict, "operator", answer.kind))
        timings = {"remote": answer.latency_ms, "total": local.timings_ms.get("total", 0.0) + answer.latency_ms}
        samples = ChunkSamples(answer.actions, answer.embedding_whitened, local.t_obs_ns, timings)
        chunk = select_chunk(samples.actions)
        verdict = self.remote_monitor.evaluate(samples, chunk, context)
        self._record("remote", "pass" if verdict.passed else "fail", answer.latency_ms / 1e3)
        if verdict.passed:
            return self._decided(RoutedChunk(samples, chunk, verdict, "remote", "pass"))
        verdict = replace(verdict, reason=f"local {local_verdict.reason}; remote {verdict.reason}")
        return self._decided(RoutedChunk(samples, chunk, verdict, "operator", "fail"))

    def _record(self, tier: str, outcome: str, seconds: float | None) -> None:
        if self.metrics is not None:
            self.metrics.record(tier, outcome, seconds)

    def _decided(self, routed: RoutedChunk) -> RoutedChunk:
        if self.metrics is not None:
            self.metrics.decisions.labels(routed.tier).inc()
        return routed

    def _publish_status(self) -> None:
        health = self.remote.health
        if self.metrics is not None:
            self.metrics.remote_state.set(_STATE_VALUE[health.state])
        text = health.describe()
        if text != self._last_status:
            self._last_status = text
            self._on_status(text)

    def close(self) -> None:
        self.remote.close()


def output_limits(manifest: BundleManifest) -> OutputLimits:
    space = manifest.action_space
    return OutputLimits(manifest.horizon, manifest.action_dim, np.asarray(space.low, dtype=np.float32),
                        np.asarray(space.high, dtype=np.float32))


def build_router(
    settings,
    manifest: BundleManifest,
    monitor: ConfidenceMonitor | None,
    registry: CollectorRegistry,
    on_status: Callable[[str], None],
) -> TieredPlanner | None:
    """The daemon's planner from ``settings.remote``; None when the tier is off (or confidence checks are)."""
    remote = settings.remote
    if not remote.enabled:
        on_status("not configured")
        return None
    if monitor is None:
        log.warning("remote tier disabled: routing needs confidence verdicts (confidence.enabled = false)")
        on_status("off: confidence checks are disabled")
        return None
    client = RemotePolicyClient(
        remote.url, remote.model_name, remote.deadline_ms, output_limits(manifest),
        down_after=remote.down_after_failures, backoff_initial_s=remote.backoff_initial_ms / 1e3,
        backoff_max_s=remote.backoff_max_ms / 1e3,
    )
    started = time.monotonic()
    if not client.wait_ready(remote.startup_wait_s):
        # Not fatal: the robot works on the local tier and the first doubtful chunk tries again.
        waited = time.monotonic() - started
        log.warning("remote tier %s (model %r) not ready after %.1f s; running on the local tier",
                    remote.url, remote.model_name, waited)
        client.report_unready(waited)
    planner = TieredPlanner(client, monitor, TierMetrics(registry), on_status, seed=settings.policy.seed)
    log.info("remote tier: %s model %r, deadline %g ms", remote.url, remote.model_name, remote.deadline_ms)
    return planner
