"""Telemetry, one job per module:

- `metrics`: the daemon's Prometheus metrics on ``prometheus_client`` (a registry per daemon, collectors that
  sample on scrape);
- `health`: the board's CPU, memory, temperatures and throttling, read on demand;
- `status`: the ``/status.json`` schema that ``vla-edge status`` reads;
- `server`: the HTTP endpoint for both;
- `observer`: the executor observer that turns ticks and chunks into metrics;
- `logs`: JSON log lines.
"""

from vla_edge.telemetry.health import HealthSample, HealthSampler, decode_throttled
from vla_edge.telemetry.logs import JsonFormatter, configure_logging
from vla_edge.telemetry.metrics import LATENCY_BUCKETS_S, DaemonMetrics
from vla_edge.telemetry.server import MetricsServer
from vla_edge.telemetry.status import StatusReport, build_status

__all__ = [
    "LATENCY_BUCKETS_S", "DaemonMetrics", "HealthSample", "HealthSampler", "JsonFormatter", "MetricsServer",
    "StatusReport", "build_status", "configure_logging", "decode_throttled",
]
