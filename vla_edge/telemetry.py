"""Telemetry: a metrics registry (Prometheus text format), an HTTP endpoint, psutil health, JSON logs.

Nothing here is global: the service creates one ``Metrics`` (usually through ``DaemonMetrics``), hands it to
the stages that report, and serves it with ``MetricsServer``. ``render_prometheus()`` writes the text
exposition format 0.0.4; ``/status.json`` carries a ``StatusReport`` (pydantic, versioned) that
``vla-edge status`` reads.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field

from vla_edge import __version__
from vla_edge.config import TelemetrySettings

log = logging.getLogger(__name__)

# Latency buckets in seconds: the control tick is 100 ms, a denoising step a few ms.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
# Recent values kept per series for the percentiles in /status.json (buckets are too coarse for a summary).
_RECENT = 256

LabelValues = tuple[str, ...]


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Iterable[str], values: Iterable[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{_escape_label(extra[1])}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _check_name(name: str) -> None:
    if not name or not (name[0].isalpha() or name[0] in "_:") or not all(c.isalnum() or c in "_:" for c in name):
        raise ValueError(f"invalid metric or label name {name!r}")


class _Family:
    """One metric name with its label names; subclasses hold the values per label combination."""

    kind: str = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: tuple[str, ...], lock: threading.Lock) -> None:
        _check_name(name)
        for label in labelnames:
            _check_name(label)
            if label.startswith("__") or label == "le":
                raise ValueError(f"label name {label!r} is reserved")
        self.name = name
        self.help = help_text
        self.labelnames = labelnames
        self._lock = lock

    def _key(self, labels: Mapping[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError


class Counter(_Family):
    """A value that only goes up (restarts from zero with the process)."""

    kind = "counter"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._values: dict[LabelValues, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot go down (inc by {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        with self._lock:
            return sum(self._values.values())

    def render(self) -> list[str]:
        # Text format 0.0.4 names the family after its sample (``_total`` included), as prometheus_client does.
        lines = [f"# HELP {self.name}_total {_escape_help(self.help)}", f"# TYPE {self.name}_total counter"]
        with self._lock:
            for key, value in sorted(self._values.items()):
                lines.append(f"{self.name}_total{_label_text(self.labelnames, key)} {_format_value(value)}")
        return lines

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {",".join(k) or "": v for k, v in sorted(self._values.items())}


class Gauge(_Family):
    """A value that goes up and down; ``set`` replaces it."""

    kind = "gauge"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._values: dict[LabelValues, float] = {}

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float | None:
        with self._lock:
            return self._values.get(self._key(labels))

    def clear(self) -> None:
        """Forget every label combination (for sets that change, such as the sensors present)."""
        with self._lock:
            self._values.clear()

    def render(self) -> list[str]:
        lines = self._header()
        with self._lock:
            for key, value in sorted(self._values.items()):
                lines.append(f"{self.name}{_label_text(self.labelnames, key)} {_format_value(value)}")
        return lines

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {",".join(k) or "": v for k, v in sorted(self._values.items())}


@dataclass
class _HistogramSeries:
    bucket_counts: list[int]
    total: float = 0.0
    count: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_RECENT))


class Histogram(_Family):
    """Observations counted into cumulative buckets (``le``), with ``_sum`` and ``_count``."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: tuple[str, ...], lock: threading.Lock,
                 buckets: Iterable[float] = LATENCY_BUCKETS_S) -> None:
        super().__init__(name, help_text, labelnames, lock)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct finite numbers, got {list(buckets)}")
        self.bounds: tuple[float, ...] = tuple(bounds)
        self._series: dict[LabelValues, _HistogramSeries] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(self.bounds, value)  # first bound >= value, as ``le`` means
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _HistogramSeries(bucket_counts=[0] * (len(self.bounds) + 1))
            series.bucket_counts[index] += 1
            series.total += value
            series.count += 1
            series.recent.append(value)

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return series.count if series else 0

    def render(self) -> list[str]:
        lines = self._header()
        with self._lock:
            for key, series in sorted(self._series.items()):
                cumulative = 0
                for bound, n in zip((*self.bounds, math.inf), series.bucket_counts):
                    cumulative += n
                    # Bounds always as floats ("1.0", "+Inf"), like prometheus_client, so dashboards match.
                    le = "+Inf" if math.isinf(bound) else repr(bound)
                    labels = _label_text(self.labelnames, key, ("le", le))
                    lines.append(f"{self.name}_bucket{labels} {cumulative}")
                plain = _label_text(self.labelnames, key)
                lines.append(f"{self.name}_sum{plain} {_format_value(series.total)}")
                lines.append(f"{self.name}_count{plain} {series.count}")
        return lines

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._lock:
            for key, series in sorted(self._series.items()):
                recent = sorted(series.recent)
                out[",".join(key)] = {
                    "count": series.count,
                    "mean": series.total / series.count if series.count else None,
                    "p50": _quantile(recent, 0.50),
                    "p95": _quantile(recent, 0.95),
                    "max_recent": recent[-1] if recent else None,
                }
        return out


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Metrics:
    """A registry of metric families. Thread-safe; one per process, passed to whoever reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}

    def _register(self, family: _Family) -> Any:
        existing = self._families.get(family.name)
        if existing is not None:
            if type(existing) is not type(family) or existing.labelnames != family.labelnames:
                raise ValueError(f"metric {family.name} already registered with another type or labels")
            return existing
        self._families[family.name] = family
        return family

    def counter(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Counter:
        if name.endswith("_total"):
            name = name[: -len("_total")]  # the ``_total`` suffix is added on output
        return self._register(Counter(name, help_text, tuple(labelnames), self._lock))

    def gauge(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Gauge:
        return self._register(Gauge(name, help_text, tuple(labelnames), self._lock))

    def histogram(self, name: str, help_text: str, labelnames: Iterable[str] = (),
                  buckets: Iterable[float] = LATENCY_BUCKETS_S) -> Histogram:
        return self._register(Histogram(name, help_text, tuple(labelnames), self._lock, buckets))

    def render_prometheus(self) -> str:
        lines: list[str] = []
        for name in sorted(self._families):
            lines.extend(self._families[name].render())
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every family's current values as plain data (for /status.json and tests)."""
        return {name: self._families[name].snapshot() for name in sorted(self._families)}


class _RateWindow:
    """Events per second over a sliding window of monotonic timestamps."""

    def __init__(self, window_s: float) -> None:
        self._window_ns = int(window_s * 1e9)
        self._times: deque[int] = deque()
        self._lock = threading.Lock()

    def add(self, t_ns: int) -> float:
        with self._lock:
            self._times.append(t_ns)
            return self._rate_locked(t_ns)

    def rate(self, now_ns: int) -> float:
        with self._lock:
            return self._rate_locked(now_ns)

    def _rate_locked(self, now_ns: int) -> float:
        while self._times and self._times[0] <= now_ns - self._window_ns:
            self._times.popleft()
        return len(self._times) / (self._window_ns / 1e9)


class DaemonMetrics:
    """The metrics the daemon reports, declared in one place so the dashboard and the code agree.

    Stages call the ``record_*`` methods; ``metrics`` is what ``MetricsServer`` serves.
    """

    def __init__(self, metrics: Metrics | None = None, *, rate_window_s: float = 10.0) -> None:
        self.metrics = metrics or Metrics()
        m = self.metrics
        self.started_ns = time.monotonic_ns()
        self.stage_latency = m.histogram(
            "vla_edge_stage_latency_seconds", "Latency of one pipeline stage.", ["stage"])
        self.chunks = m.counter("vla_edge_chunks_total", "Action chunks produced by the policy.")
        self.chunk_rate = m.gauge(
            "vla_edge_chunk_rate_hz", f"Chunks per second over the last {rate_window_s:g} s.")
        self.ticks = m.counter("vla_edge_ticks_total", "Control ticks, by what the tick sent.", ["outcome"])
        self.confidence = m.gauge(
            "vla_edge_confidence_score", "Latest value of each confidence signal.", ["signal"])
        self.confidence_threshold = m.gauge(
            "vla_edge_confidence_threshold", "Threshold each confidence signal is compared to.", ["signal"])
        self.verdicts = m.counter("vla_edge_verdicts_total", "Confidence verdicts by result.", ["result"])
        self.escalations = m.counter(
            "vla_edge_escalations_total", "Escalations to a human operator, by reason.", ["reason"])
        self.cpu_percent = m.gauge("vla_edge_process_cpu_percent", "CPU use of the daemon (100 = one core).")
        self.system_cpu_percent = m.gauge("vla_edge_system_cpu_percent", "CPU use of the whole board (0-100).")
        self.rss_bytes = m.gauge("vla_edge_process_resident_memory_bytes", "Resident memory of the daemon.")
        self.memory_used_ratio = m.gauge("vla_edge_system_memory_used_ratio", "Board memory in use (0-1).")
        self.memory_available_bytes = m.gauge("vla_edge_system_memory_available_bytes", "Board memory free.")
        self.temperature = m.gauge(
            "vla_edge_temperature_celsius", "Temperatures the board reports.", ["sensor"])
        self.throttled = m.gauge(
            "vla_edge_throttled", "Raspberry Pi firmware throttling flags (1 = set).", ["flag"])
        self.uptime = m.gauge("vla_edge_uptime_seconds", "Seconds since the daemon started.")
        self._chunk_window = _RateWindow(rate_window_s)

    def record_stage(self, stage: str, seconds: float) -> None:
        self.stage_latency.observe(seconds, stage=stage)

    def record_timings_ms(self, timings_ms: Mapping[str, float]) -> None:
        """Per-stage timings as the policy reports them (``ChunkSamples.timings_ms``)."""
        for stage, ms in timings_ms.items():
            self.stage_latency.observe(ms / 1000.0, stage=stage)

    def record_chunk(self, now_ns: int | None = None) -> None:
        self.chunks.inc()
        self.chunk_rate.set(self._chunk_window.add(time.monotonic_ns() if now_ns is None else now_ns))

    def record_tick(self, outcome: str, seconds: float | None = None) -> None:
        self.ticks.inc(outcome=outcome)
        if seconds is not None:
            self.stage_latency.observe(seconds, stage="tick")

    def record_confidence(self, scores: Iterable[tuple[str, float, float]], passed: bool) -> None:
        """``scores``: (signal, value, threshold) for each signal of one verdict."""
        for name, value, threshold in scores:
            self.confidence.set(value, signal=name)
            self.confidence_threshold.set(threshold, signal=name)
        self.verdicts.inc(result="pass" if passed else "fail")

    def record_escalation(self, reason: str) -> None:
        self.escalations.inc(reason=reason)

    def refresh(self, now_ns: int | None = None) -> None:
        """Bring time-derived gauges up to date (called before every render)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        self.chunk_rate.set(self._chunk_window.rate(now))
        self.uptime.set((now - self.started_ns) / 1e9)


# ---------------------------------------------------------------------------------------------------------
# Health: psutil, thermal zones, Raspberry Pi throttling.

# Bits of the Raspberry Pi firmware's get_throttled word (bits 16+ are "has occurred since boot").
THROTTLE_FLAGS: dict[int, str] = {
    0: "under_voltage", 1: "arm_freq_capped", 2: "throttled", 3: "soft_temp_limit",
    16: "under_voltage_occurred", 17: "arm_freq_capped_occurred", 18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


def decode_throttled(word: int) -> dict[str, bool]:
    return {name: bool(word >> bit & 1) for bit, name in THROTTLE_FLAGS.items()}


@dataclass(frozen=True)
class HealthSample:
    process_cpu_percent: float
    system_cpu_percent: float
    rss_bytes: int
    memory_used_ratio: float
    memory_available_bytes: int
    temperatures_c: dict[str, float]
    throttled: dict[str, bool] | None


class HealthSampler:
    """Samples the board's health into ``DaemonMetrics`` every ``interval_s`` on a daemon thread.

    ``sys_root`` is where ``/sys`` is looked up (a test points it at a directory tree of its own).
    """

    RPI_THROTTLED = Path("devices/platform/soc/soc:firmware/get_throttled")

    def __init__(self, daemon_metrics: DaemonMetrics, interval_s: float = 1.0, sys_root: Path = Path("/sys"),
                 use_vcgencmd: bool = True) -> None:
        self._metrics = daemon_metrics
        self._interval_s = interval_s
        self._sys_root = sys_root
        self._use_vcgencmd = use_vcgencmd
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement window
        psutil.cpu_percent(None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: HealthSample | None = None

    def _thermal_zones(self) -> dict[str, float]:
        temps: dict[str, float] = {}
        for zone in sorted((self._sys_root / "class" / "thermal").glob("thermal_zone*")):
            try:
                millideg = int((zone / "temp").read_text().strip())
                kind = (zone / "type").read_text().strip() or zone.name
            except (OSError, ValueError):
                continue  # some zones refuse reads while their sensor sleeps
            temps[f"{kind}:{zone.name}"] = millideg / 1000.0
        return temps

    def _psutil_temperatures(self) -> dict[str, float]:
        reader = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
        if reader is None:
            return {}
        try:
            groups = reader()
        except (OSError, RuntimeError):
            return {}
        temps: dict[str, float] = {}
        for chip, entries in groups.items():
            for index, entry in enumerate(entries):
                temps[f"{chip}:{entry.label or index}"] = float(entry.current)
        return temps

    def _throttled(self) -> dict[str, bool] | None:
        path = self._sys_root / self.RPI_THROTTLED
        try:
            return decode_throttled(int(path.read_text().strip(), 16))
        except (OSError, ValueError):
            pass
        if not self._use_vcgencmd:
            return None
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=2,
                                 check=True).stdout
            return decode_throttled(int(out.strip().split("=", 1)[1], 16))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def sample(self) -> HealthSample:
        memory = psutil.virtual_memory()
        temps = self._psutil_temperatures()
        # Jetson boards expose their sensors as thermal zones that psutil does not always list.
        for name, value in self._thermal_zones().items():
            temps.setdefault(name, value)
        sample = HealthSample(
            process_cpu_percent=self._process.cpu_percent(None),
            system_cpu_percent=psutil.cpu_percent(None),
            rss_bytes=self._process.memory_info().rss,
            memory_used_ratio=(memory.total - memory.available) / memory.total,
            memory_available_bytes=memory.available,
            temperatures_c=temps,
            throttled=self._throttled(),
        )
        m = self._metrics
        m.cpu_percent.set(sample.process_cpu_percent)
        m.system_cpu_percent.set(sample.system_cpu_percent)
        m.rss_bytes.set(sample.rss_bytes)
        m.memory_used_ratio.set(sample.memory_used_ratio)
        m.memory_available_bytes.set(sample.memory_available_bytes)
        m.temperature.clear()
        for sensor, value in temps.items():
            m.temperature.set(value, sensor=sensor)
        if sample.throttled is not None:
            for flag, is_set in sample.throttled.items():
                m.throttled.set(1.0 if is_set else 0.0, flag=flag)
        self.last = sample
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.sample()
            except Exception:  # a sensor failing must not take the daemon down; say so and keep sampling
                log.exception("health sample failed")

    def start(self) -> HealthSampler:
        if self._thread is None:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="health-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s + 1.0)
            self._thread = None


# ---------------------------------------------------------------------------------------------------------
# /status.json: the one-screen summary a running daemon gives `vla-edge status`.

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


StatusProvider = Callable[[], Mapping[str, str | int | float | bool | None]]


def build_status(daemon_metrics: DaemonMetrics, state: Mapping[str, Any] | None = None) -> StatusReport:
    dm = daemon_metrics
    dm.refresh()

    def ms(x: float | None) -> float | None:
        return None if x is None else x * 1000.0

    stages = {
        stage: StageSummary(count=s["count"], mean_ms=ms(s["mean"]), p50_ms=ms(s["p50"]), p95_ms=ms(s["p95"]))
        for stage, s in dm.stage_latency.snapshot().items()
    }
    throttled = [flag for flag, value in dm.throttled.snapshot().items() if value >= 0.5]
    return StatusReport(
        version=__version__,
        pid=os.getpid(),
        uptime_s=(time.monotonic_ns() - dm.started_ns) / 1e9,
        state=dict(state or {}),
        stages=stages,
        chunks_total=dm.chunks.total(),
        chunk_rate_hz=dm.chunk_rate.value() or 0.0,
        ticks=dm.ticks.snapshot(),
        verdicts=dm.verdicts.snapshot(),
        escalations=dm.escalations.snapshot(),
        confidence=dm.confidence.snapshot(),
        health=HealthSummary(
            process_cpu_percent=dm.cpu_percent.value(),
            system_cpu_percent=dm.system_cpu_percent.value(),
            rss_bytes=dm.rss_bytes.value(),
            memory_used_ratio=dm.memory_used_ratio.value(),
            temperatures_c=dm.temperature.snapshot(),
            throttled=throttled,
        ),
    )


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self.server.daemon_metrics.refresh()
                body = self.server.daemon_metrics.metrics.render_prometheus().encode()
                self._send(200, "text/plain; version=0.0.4; charset=utf-8", body)
            elif path == "/status.json":
                state = self.server.status_provider() if self.server.status_provider else {}
                body = build_status(self.server.daemon_metrics, state).model_dump_json().encode()
                self._send(200, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /status.json\n")
        except Exception:  # the client gets a status line, never a traceback; the log gets the details
            log.exception("telemetry request %s failed", path)
            self._send(500, "text/plain; charset=utf-8", b"internal error (see the daemon's log)\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature from http.server)
        log.debug("telemetry %s " + format, self.address_string(), *args)


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], daemon_metrics: DaemonMetrics,
                 status_provider: StatusProvider | None) -> None:
        self.daemon_metrics = daemon_metrics
        self.status_provider = status_provider
        super().__init__(address, _Handler)


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text) and ``/status.json`` over HTTP on a background thread.

    Binds 127.0.0.1 by default: metrics reveal what the robot is doing, so exposing them is a choice.
    ``port=0`` picks a free port (see ``.port``).
    """

    def __init__(self, daemon_metrics: DaemonMetrics, host: str = "127.0.0.1", port: int = 9780,
                 status_provider: StatusProvider | None = None) -> None:
        self._server = _MetricsHTTPServer((host, port), daemon_metrics, status_provider)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MetricsServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------------
# Logs: one JSON object per line on stderr (journald keeps them; jq reads them).

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}``; wall-clock time because logs are read by people."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _VlaEdgeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so configuring twice replaces it instead of doubling lines."""


def configure_logging(settings: TelemetrySettings, stream: IO[str] | None = None) -> logging.Handler:
    """Send the root logger to ``stream`` (stderr) as JSON lines or plain text, at ``settings.log_level``."""
    handler = _VlaEdgeHandler(stream if stream is not None else sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _VlaEdgeHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handler
