"""Telemetry: Prometheus text parsed by prometheus_client, a real HTTP endpoint, health from real files, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vla_edge.config import TelemetrySettings
from vla_edge.telemetry import (
    DaemonMetrics,
    HealthSampler,
    Metrics,
    MetricsServer,
    StatusReport,
    configure_logging,
    decode_throttled,
)


def parse(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_histogram_buckets_are_cumulative_and_parse():
    m = Metrics()
    h = m.histogram("vla_edge_stage_latency_seconds", "Latency.", ["stage"], buckets=(0.01, 0.1, 1.0))
    for v in (0.005, 0.01, 0.05, 0.5, 3.0):
        h.observe(v, stage="denoise")
    h.observe(0.2, stage='we"ird\\na\nme')
    fam = parse(m.render_prometheus())["vla_edge_stage_latency_seconds"]
    assert fam.type == "histogram"
    got = samples(fam)
    lab = (("le", "0.01"), ("stage", "denoise"))
    assert got[("vla_edge_stage_latency_seconds_bucket", lab)] == 2  # 0.01 counts in le="0.01"
    assert got[("vla_edge_stage_latency_seconds_bucket", (("le", "0.1"), ("stage", "denoise")))] == 3
    assert got[("vla_edge_stage_latency_seconds_bucket", (("le", "1.0"), ("stage", "denoise")))] == 4
    assert got[("vla_edge_stage_latency_seconds_bucket", (("le", "+Inf"), ("stage", "denoise")))] == 5
    assert got[("vla_edge_stage_latency_seconds_count", (("stage", "denoise"),))] == 5
    assert got[("vla_edge_stage_latency_seconds_sum", (("stage", "denoise"),))] == pytest.approx(3.565)
    assert got[("vla_edge_stage_latency_seconds_count", (("stage", 'we"ird\\na\nme'),))] == 1


def test_counter_gauge_and_label_checks():
    m = Metrics()
    c = m.counter("vla_edge_escalations_total", "Escalations.", ["reason"])
    c.inc(reason="ood")
    c.inc(2, reason="spread")
    g = m.gauge("vla_edge_temperature_celsius", "Temp.", ["sensor"])
    g.set(51.5, sensor="cpu")
    fams = parse(m.render_prometheus())
    assert fams["vla_edge_escalations"].type == "counter"
    assert samples(fams["vla_edge_escalations"])[("vla_edge_escalations_total", (("reason", "spread"),))] == 2
    assert samples(fams["vla_edge_temperature_celsius"])[("vla_edge_temperature_celsius", (("sensor", "cpu"),))] == 51.5
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(stage="x")
    with pytest.raises(ValueError, match="cannot go down"):
        c.inc(-1, reason="ood")
    with pytest.raises(ValueError, match="already registered"):
        m.gauge("vla_edge_escalations", "again")
    with pytest.raises(ValueError, match="invalid metric"):
        m.gauge("9bad-name", "x")


def test_chunk_rate_over_window():
    dm = DaemonMetrics(rate_window_s=2.0)
    t0 = 1_000_000_000_000
    for i in range(10):
        dm.record_chunk(now_ns=t0 + i * 200_000_000)  # 5 Hz
    assert dm.chunk_rate.value() == pytest.approx(5.0)
    dm.refresh(now_ns=t0 + 10_000_000_000)  # silence: rate decays to zero
    assert dm.chunk_rate.value() == 0.0
    assert dm.chunks.total() == 10


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
    sample = HealthSampler(dm, sys_root=sys_root, use_vcgencmd=False).sample()
    assert sample.temperatures_c["CPU-therm:thermal_zone0"] == 61.25
    assert sample.rss_bytes > 10_000_000
    assert 0.0 < sample.memory_used_ratio < 1.0
    fams = parse(dm.metrics.render_prometheus())
    thr = samples(fams["vla_edge_throttled"])
    assert thr[("vla_edge_throttled", (("flag", "under_voltage"),))] == 1
    assert thr[("vla_edge_throttled", (("flag", "throttled"),))] == 1
    assert thr[("vla_edge_throttled", (("flag", "arm_freq_capped"),))] == 0
    assert thr[("vla_edge_throttled", (("flag", "throttled_occurred"),))] == 1
    temp = samples(fams["vla_edge_temperature_celsius"])
    assert temp[("vla_edge_temperature_celsius", (("sensor", "CPU-therm:thermal_zone0"),))] == 61.25


def test_decode_throttled_bits():
    assert decode_throttled(0) == {k: False for k in decode_throttled(0)}
    flags = decode_throttled(0x80008)
    assert flags["soft_temp_limit"] and flags["soft_temp_limit_occurred"] and not flags["under_voltage"]


def test_server_serves_metrics_and_status_on_loopback():
    dm = DaemonMetrics()
    dm.record_timings_ms({"encode": 4.0, "denoise": 12.0})
    dm.record_tick("sent", 0.0004)
    dm.record_chunk()
    dm.record_confidence([("spread", 0.12, 0.3), ("ood", 2.5, 4.0)], passed=True)
    dm.record_escalation("spread")
    HealthSampler(dm, sys_root=Path("/nonexistent"), use_vcgencmd=False).sample()
    with MetricsServer(dm, port=0, status_provider=lambda: {"mode": "running", "step": 3}) as server:
        assert server.host == "127.0.0.1"
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            fams = parse(resp.read().decode())
        with urllib.request.urlopen(f"{server.url}/status.json", timeout=5) as resp:
            status = StatusReport.model_validate_json(resp.read())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}/nope", timeout=5)
        assert err.value.code == 404
    lat = samples(fams["vla_edge_stage_latency_seconds"])
    assert lat[("vla_edge_stage_latency_seconds_sum", (("stage", "denoise"),))] == pytest.approx(0.012)
    assert lat[("vla_edge_stage_latency_seconds_count", (("stage", "tick"),))] == 1
    for name in ("vla_edge_chunk_rate_hz", "vla_edge_confidence_score", "vla_edge_escalations",
                 "vla_edge_process_cpu_percent", "vla_edge_process_resident_memory_bytes",
                 "vla_edge_system_memory_used_ratio", "vla_edge_uptime_seconds"):
        assert name in fams, name
    assert status.state == {"mode": "running", "step": 3}
    assert status.stages["denoise"].p50_ms == pytest.approx(12.0)
    assert status.chunks_total == 1
    assert status.escalations == {"spread": 1}
    assert status.confidence == {"ood": 2.5, "spread": 0.12}
    assert status.health.rss_bytes and status.health.rss_bytes > 0


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
