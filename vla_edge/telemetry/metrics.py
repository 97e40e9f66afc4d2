"""The daemon's Prometheus metrics, on ``prometheus_client``, in a registry of the daemon's own.

Nothing here touches the library's global default registry: each `DaemonMetrics` owns a ``CollectorRegistry``
that the service serves (`vla_edge.telemetry.server`) and hands to whoever else reports (the remote tier).
Values that are a function of time (the chunk rate, the uptime) and the board's health are computed when
Prometheus scrapes, by custom collectors, not written on every tick.

The metric names are listed in docs/observability.md; the Grafana dashboard in deploy/grafana/ uses them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vla_edge.telemetry.health import HealthSampler

# Latency buckets in seconds: the control tick is 100 ms, a denoising step a few ms.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
# Recent values kept per stage for the percentiles in /status.json (buckets are too coarse for a summary).
RECENT_PER_STAGE = 256


class RateWindow:
    """Events per second over a sliding window of monotonic timestamps."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._window_ns = int(window_s * 1e9)
        self._times: deque[int] = deque()
        self._lock = threading.Lock()

    def add(self, t_ns: int) -> None:
        with self._lock:
            self._times.append(t_ns)
            self._trim(t_ns)

    def rate(self, now_ns: int) -> float:
        with self._lock:
            self._trim(now_ns)
            return len(self._times) / self.window_s

    def _trim(self, now_ns: int) -> None:
        while self._times and self._times[0] <= now_ns - self._window_ns:
            self._times.popleft()


class _Children:
    """A labelled metric's children by label value, looked up once each: ``labels()`` costs most of a tick's
    metrics time otherwise (it re-validates the labels under a lock on every call)."""

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self._metric = metric
        self._children: dict[str, Any] = {}

    def __getitem__(self, value: str) -> Any:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._metric.labels(value)
        return child


class _ClockCollector(Collector):
    """``vla_edge_chunk_rate_hz`` and ``vla_edge_uptime_seconds``, computed at scrape time."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic_ns()
        m = self._metrics
        yield GaugeMetricFamily("vla_edge_chunk_rate_hz", f"Chunks per second over the last "
                                f"{m.chunk_window.window_s:g} s.", value=m.chunk_rate(now))
        yield GaugeMetricFamily("vla_edge_uptime_seconds", "Seconds since the daemon started.",
                                value=(now - m.started_ns) / 1e9)


class _HealthCollector(Collector):
    """The board's health (CPU, memory, temperatures, throttling), sampled when Prometheus scrapes."""

    def __init__(self, sampler: HealthSampler) -> None:
        self._sampler = sampler

    def describe(self) -> list[Metric]:
        return []  # the sensors present are only known by sampling; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        s = self._sampler.sample_if_older()
        yield GaugeMetricFamily("vla_edge_process_cpu_percent", "CPU use of the daemon (100 = one core).",
                                value=s.process_cpu_percent)
        yield GaugeMetricFamily("vla_edge_system_cpu_percent", "CPU use of the whole board (0-100).",
                                value=s.system_cpu_percent)
        yield GaugeMetricFamily("vla_edge_process_resident_memory_bytes", "Resident memory of the daemon.",
                                value=s.rss_bytes)
        yield GaugeMetricFamily("vla_edge_system_memory_used_ratio", "Board memory in use (0-1).",
                                value=s.memory_used_ratio)
        yield GaugeMetricFamily("vla_edge_system_memory_available_bytes", "Board memory free.",
                                value=s.memory_available_bytes)
        temperature = GaugeMetricFamily("vla_edge_temperature_celsius", "Temperatures the board reports.",
                                        labels=["sensor"])
        for sensor, value in sorted(s.temperatures_c.items()):
            temperature.add_metric([sensor], value)
        yield temperature
        if s.throttled is not None:
            throttled = GaugeMetricFamily("vla_edge_throttled", "Raspberry Pi firmware throttling flags (1 = set).",
                                          labels=["flag"])
            for flag, is_set in s.throttled.items():
                throttled.add_metric([flag], 1.0 if is_set else 0.0)
            yield throttled


class DaemonMetrics:
    """The metrics the daemon reports, declared in one place so the dashboard and the code agree.

    Stages call the ``record_*`` methods; ``registry`` is what the metrics endpoint serves.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, rate_window_s: float = 10.0) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.started_ns = time.monotonic_ns()
        self.chunk_window = RateWindow(rate_window_s)
        self.stage_latency = Histogram("vla_edge_stage_latency_seconds", "Latency of one pipeline stage.",
                                       ["stage"], registry=r, buckets=LATENCY_BUCKETS_S)
        self.chunks = Counter("vla_edge_chunks", "Action chunks produced by the policy.", registry=r)
        self.frames = Counter("vla_edge_frames", "Distinct camera frames the control loop used.", registry=r)
        self.ticks = Counter("vla_edge_ticks", "Control ticks, by what the tick sent.", ["outcome"], registry=r)
        self.confidence = Gauge("vla_edge_confidence_score", "Latest value of each confidence signal.",
                                ["signal"], registry=r)
        self.confidence_threshold = Gauge("vla_edge_confidence_threshold",
                                          "Threshold each confidence signal is compared to.", ["signal"], registry=r)
        self.verdicts = Counter("vla_edge_verdicts", "Confidence verdicts by result.", ["result"], registry=r)
        self.escalations = Counter("vla_edge_escalations", "Escalations to a human operator, by reason.",
                                   ["reason"], registry=r)
        self.recoveries = Counter(
            "vla_edge_recoveries", "What the robot tried by itself before asking: kind resample (a refused chunk "
            "re-sampled; outcome accepted/refused) or step_retry (outcome: what the step ended in).",
            ["kind", "outcome"], registry=r)
        self.plan_ahead = Counter(
            "vla_edge_plan_ahead", "Plan-ahead waits for the controller's report of the action just sent, by "
            "feedback: reported (planned from a frame taken after it), no_report / no_frame (the time to plan before "
            "the next tick ran out first).", ["feedback"], registry=r)
        self.automatic_verifications = Counter(
            "vla_edge_automatic_verifications", "Automatic scene verifications by scope (step, checkpoint) and "
            "decision (as_expected, failed, unsure).", ["scope", "decision"], registry=r)
        self._stage = _Children(self.stage_latency)
        self._tick = _Children(self.ticks)
        self._signal_value = _Children(self.confidence)
        self._signal_threshold = _Children(self.confidence_threshold)
        self._verdict = _Children(self.verdicts)
        r.register(_ClockCollector(self))
        self.health: HealthSampler | None = None
        self._recent: dict[str, deque[float]] = {}
        self._recent_lock = threading.Lock()

    # -- what the stages report ----------------------------------------------------------------------------------
    def record_stage(self, stage: str, seconds: float) -> None:
        self._stage[stage].observe(seconds)
        with self._recent_lock:
            recent = self._recent.get(stage)
            if recent is None:
                recent = self._recent[stage] = deque(maxlen=RECENT_PER_STAGE)
            recent.append(seconds)

    def record_timings_ms(self, timings_ms: Mapping[str, float]) -> None:
        """Per-stage timings as the policy reports them (``ChunkSamples.timings_ms``)."""
        for stage, ms in timings_ms.items():
            self.record_stage(stage, ms / 1000.0)

    def record_chunk(self, now_ns: int | None = None) -> None:
        self.chunks.inc()
        self.chunk_window.add(time.monotonic_ns() if now_ns is None else now_ns)

    def record_tick(self, outcome: str, seconds: float | None = None) -> None:
        self._tick[outcome].inc()
        if seconds is not None:
            self.record_stage("tick", seconds)

    def record_confidence(self, scores: Iterable[tuple[str, float, float]], passed: bool) -> None:
        """``scores``: (signal, value, threshold) for each signal of one verdict."""
        for name, value, threshold in scores:
            self._signal_value[name].set(value)
            self._signal_threshold[name].set(threshold)
        self._verdict["pass" if passed else "fail"].inc()

    def record_escalation(self, reason: str) -> None:
        self.escalations.labels(reason).inc()

    def record_resample(self, accepted: bool) -> None:
        self.recoveries.labels("resample", "accepted" if accepted else "refused").inc()

    def record_task_event(self, kind: str, detail: Mapping[str, Any]) -> None:
        """The task runner's events that count as recoveries or automatic verifications."""
        if kind == "step_retry":
            self.recoveries.labels("step_retry", str(detail.get("after", "unknown"))).inc()
        elif kind == "verified":
            decision = "unsure" if not detail.get("sure", True) else ("as_expected" if detail.get("ok") else "failed")
            self.automatic_verifications.labels(str(detail.get("scope", "step")), decision).inc()

    def attach_health(self, sampler: HealthSampler) -> None:
        """Report the board's health from ``sampler`` at every scrape (and in /status.json)."""
        self.health = sampler
        self.registry.register(_HealthCollector(sampler))

    # -- reads (for /status.json and tests) --------------------------------------------------------------------
    def chunk_rate(self, now_ns: int | None = None) -> float:
        return self.chunk_window.rate(time.monotonic_ns() if now_ns is None else now_ns)

    def recent_stage_seconds(self) -> dict[str, list[float]]:
        with self._recent_lock:
            return {stage: list(values) for stage, values in sorted(self._recent.items())}

    def stage_counts(self) -> dict[str, int]:
        return {labels["stage"]: int(v) for labels, v in _samples(self.stage_latency, "_count")}

    def chunks_total(self) -> float:
        return sum(v for _, v in _samples(self.chunks, "_total"))

    def by_label(self, metric: Counter | Gauge, label: str) -> dict[str, float]:
        """A labelled counter's totals or gauge's values as ``{label value: value}``."""
        suffix = "_total" if isinstance(metric, Counter) else ""
        return {labels[label]: v for labels, v in _samples(metric, suffix)}


def _samples(metric: Counter | Gauge | Histogram, suffix: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                out.append((sample.labels, sample.value))
    return out
