"""Telemetry: the daemon's metrics on prometheus_client, served over real HTTP and parsed by prometheus_client's own
parser; health from real files; /status.json; JSON logs."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vla_edge.config import TelemetrySettings
from vla_edge.telemetry import (
    DaemonMetrics,
    HealthSampler,
    MetricsServer,
    StatusReport,
    configure_logging,
    decode_throttled,
)
from vla_edge.telemetry.metrics import LATENCY_BUCKETS_S

# The names the dashboard (deploy/grafana/) and docs/observability.md use: kept stable across the move to
# prometheus_client (counters keep their ``_total`` sample names).
DAEMON_METRICS = (
    "vla_edge_stage_latency_seconds", "vla_edge_chunks", "vla_edge_chunk_rate_hz", "vla_edge_ticks",
    "vla_edge_confidence_score", "vla_edge_confidence_threshold", "vla_edge_verdicts", "vla_edge_escalations",
    "vla_edge_uptime_seconds",
)
HEALTH_METRICS = (
    "vla_edge_process_cpu_percent", "vla_edge_system_cpu_percent", "vla_edge_process_resident_memory_bytes",
    "vla_edge_system_memory_used_ratio", "vla_edge_system_memory_available_bytes", "vla_edge_temperature_celsius",
)


def parse(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def scrape(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(resp.read().decode())


def test_each_daemon_has_its_own_registry_and_the_global_one_stays_empty():
    before = {f.name for f in prometheus_client.REGISTRY.collect()}
    a, b = DaemonMetrics(), DaemonMetrics()  # two in one process: no "Duplicated timeseries" error
    a.record_chunk()
    a.record_escalation("spread")
    assert a.chunks_total() == 1 and b.chunks_total() == 0
    assert {f.name for f in prometheus_client.REGISTRY.collect()} == before
    assert not any(f.name.startswith("vla_edge") for f in prometheus_client.REGISTRY.collect())


def test_histogram_buckets_are_cumulative_over_http():
    dm = DaemonMetrics()
    for v in (0.0004, 0.001, 0.004, 0.3, 3.0):
        dm.record_stage("denoise", v)
    dm.record_stage('we"ird\\na\nme', 0.2)
    with MetricsServer(dm, port=0) as server:
        fam = scrape(server.url)["vla_edge_stage_latency_seconds"]
    assert fam.type == "histogram"
    got = samples(fam)

    def bucket(le: str) -> float:
        return got[("vla_edge_stage_latency_seconds_bucket", (("le", le), ("stage", "denoise")))]

    assert bucket("0.0005") == 1
    assert bucket("0.001") == 2  # 0.001 counts in le="0.001"
    assert bucket("0.005") == 3 and bucket("0.25") == 3 and bucket("0.5") == 4 and bucket("+Inf") == 5
    assert len([k for k in got if k[0].endswith("_bucket") and ("stage", "denoise") in k[1]]) == \
        len(LATENCY_BUCKETS_S) + 1
    assert got[("vla_edge_stage_latency_seconds_count", (("stage", "denoise"),))] == 5
    assert got[("vla_edge_stage_latency_seconds_sum", (("stage", "denoise"),))] == pytest.approx(3.3054)
    assert got[("vla_edge_stage_latency_seconds_count", (("stage", 'we"ird\\na\nme'),))] == 1


def test_chunk_rate_and_uptime_are_computed_at_scrape_time():
    dm = DaemonMetrics(rate_window_s=2.0)
    t0 = 1_000_000_000_000
    for i in range(10):
        dm.record_chunk(now_ns=t0 + i * 200_000_000)  # 5 Hz
    assert dm.chunk_rate(now_ns=t0 + 9 * 200_000_000) == pytest.approx(5.0)
    assert dm.chunk_rate(now_ns=t0 + 10_000_000_000) == 0.0  # silence: the rate decays to zero
    assert dm.chunks_total() == 10
    first = dm.registry.get_sample_value("vla_edge_uptime_seconds")
    second = dm.registry.get_sample_value("vla_edge_uptime_seconds")
    assert 0 <= first <= second


def test_health_from_thermal_zones_and_pi_throttle_file(tmp_path: Path):
    sys_root = tmp_path / "sys"
    zone = sys_root / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("61250\n")
    (zone / "type").write_text("CPU-therm\n")
    throttle = sys_root / "devices/platform/soc/soc:firmware/get_throttled"
    throttle.parent.mkdir(parents=True)
    throttle.write_text("50005\n")  # under-voltage now, throttled now, under-voltage occurred, throttling occurred
    dm = DaemonMetrics()
    sampler = HealthSampler(sys_root=sys_root, use_vcgencmd=False)
    dm.attach_health(sampler)
    sample = sampler.sample()
    assert sample.temperatures_c["CPU-therm:thermal_zone0"] == 61.25
    assert sample.rss_bytes > 10_000_000
    assert 0.0 < sample.memory_used_ratio < 1.0
    with MetricsServer(dm, port=0) as server:
        fams = scrape(server.url)
    thr = samples(fams["vla_edge_throttled"])
    assert thr[("vla_edge_throttled", (("flag", "under_voltage"),))] == 1
    assert thr[("vla_edge_throttled", (("flag", "throttled"),))] == 1
    assert thr[("vla_edge_throttled", (("flag", "arm_freq_capped"),))] == 0
    assert thr[("vla_edge_throttled", (("flag", "throttled_occurred"),))] == 1
    temp = samples(fams["vla_edge_temperature_celsius"])
    assert temp[("vla_edge_temperature_celsius", (("sensor", "CPU-therm:thermal_zone0"),))] == 61.25


def test_health_is_reread_only_when_older_than_the_interval(tmp_path: Path):
    sampler = HealthSampler(min_interval_s=3600.0, sys_root=tmp_path, use_vcgencmd=False)
    first = sampler.sample_if_older()
    assert sampler.sample_if_older() is first
    assert HealthSampler(min_interval_s=0.0, sys_root=tmp_path, use_vcgencmd=False).sample_if_older() is not first


def test_decode_throttled_bits():
    assert decode_throttled(0) == {k: False for k in decode_throttled(0)}
    flags = decode_throttled(0x80008)
    assert flags["soft_temp_limit"] and flags["soft_temp_limit_occurred"] and not flags["under_voltage"]


def test_server_serves_metrics_and_status_on_loopback():
    dm = DaemonMetrics()
    dm.record_timings_ms({"encode": 4.0, "denoise": 12.0})
    dm.record_tick("action", 0.0004)
    dm.record_tick("hold_no_chunk", 0.0002)
    dm.record_chunk()
    dm.record_confidence([("spread", 0.12, 0.3), ("ood", 2.5, 4.0)], passed=True)
    dm.record_escalation("spread")
    dm.attach_health(HealthSampler(sys_root=Path("/nonexistent"), use_vcgencmd=False))
    with MetricsServer(dm, port=0, status_provider=lambda: {"mode": "running", "step": 3}) as server:
        assert server.host == "127.0.0.1"
        fams = scrape(server.url)
        with urllib.request.urlopen(f"{server.url}/status.json", timeout=5) as resp:
            status = StatusReport.model_validate_json(resp.read())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}/nope", timeout=5)
        assert err.value.code == 404
    lat = samples(fams["vla_edge_stage_latency_seconds"])
    assert lat[("vla_edge_stage_latency_seconds_sum", (("stage", "denoise"),))] == pytest.approx(0.012)
    assert lat[("vla_edge_stage_latency_seconds_count", (("stage", "tick"),))] == 2
    for name in DAEMON_METRICS + HEALTH_METRICS:
        assert name in fams, name
    ticks = samples(fams["vla_edge_ticks"])
    assert ticks[("vla_edge_ticks_total", (("outcome", "hold_no_chunk"),))] == 1
    assert samples(fams["vla_edge_escalations"])[("vla_edge_escalations_total", (("reason", "spread"),))] == 1
    assert status.state == {"mode": "running", "step": 3}
    assert status.stages["denoise"].p50_ms == pytest.approx(12.0) and status.stages["denoise"].count == 1
    assert status.chunks_total == 1
    assert status.ticks == {"action": 1, "hold_no_chunk": 1}
    assert status.escalations == {"spread": 1}
    assert status.confidence == {"ood": 2.5, "spread": 0.12}
    assert status.health.rss_bytes and status.health.rss_bytes > 0


def test_status_carries_the_stream_counters_and_status_shows_the_refusals():
    """The service adds the action stream's counters under "stream" (docs/wire.md §8). On main before this,
    /status.json answered 500 whenever a daemon had a stream: the nested counters did not fit the flat state."""
    from rich.console import Console

    from vla_edge.commands.status import render

    stream = {"daemon": {"sent_action": 40, "refused_auth": 2}, "controller": {"executed": 38, "rejected_late": 1},
              "link_round_trip_ms": 0.7}
    with MetricsServer(DaemonMetrics(), port=0, status_provider=lambda: {"mode": "running", "stream": stream}) as server:
        with urllib.request.urlopen(f"{server.url}/status.json", timeout=30) as resp:
            status = StatusReport.model_validate_json(resp.read())
    assert status.state == {"mode": "running"}
    assert status.stream is not None and status.stream.model_dump() == stream
    console = Console(record=True, width=200)
    console.print(render(status, server.url))
    text = console.export_text()
    assert "refused_auth 2" in text and "rejected_late 1" in text and "link round trip 0.7 ms" in text


def test_openmetrics_is_served_when_asked_for():
    dm = DaemonMetrics()
    dm.record_chunk()
    with MetricsServer(dm, port=0) as server:
        request = urllib.request.Request(f"{server.url}/metrics",
                                         headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert resp.read().decode().rstrip().endswith("# EOF")


def test_failing_status_provider_gives_500_without_traceback():
    def broken() -> dict:
        raise RuntimeError("secret internals")

    with MetricsServer(DaemonMetrics(), port=0, status_provider=broken) as server:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}/status.json", timeout=5)
        body = err.value.read().decode()
    assert err.value.code == 500
    assert "secret" not in body and "Traceback" not in body


def test_json_logs_one_object_per_line_with_extra_fields():
    stream = io.StringIO()
    handler = configure_logging(TelemetrySettings(log_format="json", log_level="INFO"), stream=stream)
    try:
        configure_logging(TelemetrySettings(log_format="json", log_level="INFO"), stream=stream)  # no doubling
        logger = logging.getLogger("vla_edge.test")
        logger.debug("hidden")
        logger.info("chunk ready %d", 7, extra={"latency_ms": 12.5, "stage": "denoise"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
        for h in list(logging.getLogger().handlers):
            if type(h).__name__ == "_VlaEdgeHandler":
                logging.getLogger().removeHandler(h)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "chunk ready 7" and first["level"] == "INFO" and first["logger"] == "vla_edge.test"
    assert first["latency_ms"] == 12.5 and first["stage"] == "denoise"
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]
