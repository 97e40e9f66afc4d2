"""``/status.json``: the one-screen summary a running daemon gives ``vla-edge status`` (a versioned schema)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vla_edge import __version__
from vla_edge.telemetry.metrics import DaemonMetrics

STATUS_VERSION = 1


class StageSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None


class HealthSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    process_cpu_percent: float | None = None
    system_cpu_percent: float | None = None
    rss_bytes: float | None = None
    memory_used_ratio: float | None = None
    temperatures_c: dict[str, float] = Field(default_factory=dict)
    throttled: list[str] = Field(default_factory=list, description="Flags currently set.")


class StreamStatus(BaseModel):
    """The action stream's counters (docs/wire.md §8): the daemon's own (sent, refused: ``refused_auth``,
    ``rejected_state_dim`` ...), the controller's from its latest state report, and the link's round trip."""

    model_config = ConfigDict(extra="forbid")
    daemon: dict[str, int] = Field(default_factory=dict)
    controller: dict[str, int] = Field(default_factory=dict)
    link_round_trip_ms: float | None = None


class StatusReport(BaseModel):
    """What ``/status.json`` returns. Versioned: ``vla-edge status`` refuses a version it does not know."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = STATUS_VERSION
    version: str
    pid: int
    uptime_s: float
    state: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="What the service adds: mode, task, step, bundle, peer ...")
    stages: dict[str, StageSummary] = Field(default_factory=dict)
    chunks_total: float = 0.0
    chunk_rate_hz: float = 0.0
    ticks: dict[str, float] = Field(default_factory=dict)
    verdicts: dict[str, float] = Field(default_factory=dict)
    escalations: dict[str, float] = Field(default_factory=dict)
    confidence: dict[str, float] = Field(default_factory=dict)
    health: HealthSummary = Field(default_factory=HealthSummary)
    stream: StreamStatus | None = Field(default=None, description="None when the daemon runs no action stream.")


# What the service adds: flat values, plus the action stream's counters under "stream" (a StreamStatus).
StatusProvider = Callable[[], Mapping[str, Any]]


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stage_summary(count: int, recent_s: list[float]) -> StageSummary:
    """Mean and percentiles (ms) of the recent values of one stage; ``count`` is the all-time count."""
    ordered = sorted(recent_s)
    ms = [x * 1000.0 for x in ordered]
    return StageSummary(count=count, mean_ms=sum(ms) / len(ms) if ms else None,
                        p50_ms=_quantile(ms, 0.50), p95_ms=_quantile(ms, 0.95))


def build_status(metrics: DaemonMetrics, state: Mapping[str, Any] | None = None) -> StatusReport:
    counts = metrics.stage_counts()
    stages = {stage: stage_summary(counts.get(stage, len(recent)), recent)
              for stage, recent in metrics.recent_stage_seconds().items()}
    health = HealthSummary()
    if metrics.health is not None:
        s = metrics.health.sample_if_older()
        health = HealthSummary(
            process_cpu_percent=s.process_cpu_percent, system_cpu_percent=s.system_cpu_percent,
            rss_bytes=s.rss_bytes, memory_used_ratio=s.memory_used_ratio, temperatures_c=s.temperatures_c,
            throttled=[flag for flag, is_set in (s.throttled or {}).items() if is_set],
        )
    state = dict(state or {})
    stream = state.pop("stream", None)  # the one structured entry the service gives: typed here, not in state
    return StatusReport(
        version=__version__,
        pid=os.getpid(),
        uptime_s=(time.monotonic_ns() - metrics.started_ns) / 1e9,
        state=state,
        stages=stages,
        chunks_total=metrics.chunks_total(),
        chunk_rate_hz=metrics.chunk_rate(),
        ticks=metrics.by_label(metrics.ticks, "outcome"),
        verdicts=metrics.by_label(metrics.verdicts, "result"),
        escalations=metrics.by_label(metrics.escalations, "reason"),
        confidence=metrics.by_label(metrics.confidence, "signal"),
        health=health,
        stream=None if stream is None else StreamStatus.model_validate(stream),
    )
