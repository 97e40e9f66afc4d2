"""``vla-edge status``: a one-screen summary of a running daemon, read from its ``/status.json``."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from vla_edge.config import load_settings
from vla_edge.errors import VlaEdgeError
from vla_edge.telemetry import StatusReport

_MAX_BYTES = 1 << 20


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="one-screen summary of the running daemon")
    parser.add_argument("--url", default=None,
                        help="daemon telemetry address (default http://<telemetry.metrics_host>:<metrics_port>)")
    parser.add_argument("--config", type=Path, default=None, help="config file to read the address from")
    parser.add_argument("--json", action="store_true", help="print the raw status document")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the daemon")
    parser.set_defaults(func=run)


def fetch_status(url: str, timeout: float) -> StatusReport:
    endpoint = url.rstrip("/") + "/status.json"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as resp:
            body = resp.read(_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise VlaEdgeError(f"the daemon at {url} answered {exc.code} {exc.reason}; see its log: "
                           "journalctl -u vla-edge -n 50") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise VlaEdgeError(f"no vla-edge daemon answers at {url} ({reason}). Is it running? "
                           "`systemctl status vla-edge`; the address is telemetry.metrics_host/metrics_port") from None
    if len(body) > _MAX_BYTES:
        raise VlaEdgeError(f"{endpoint} sent more than {_MAX_BYTES} bytes; that is not a vla-edge status")
    try:
        return StatusReport.model_validate_json(body)
    except ValidationError as exc:
        raise VlaEdgeError(f"{endpoint} did not return a vla-edge status this version understands "
                           f"({exc.error_count()} problems, first: {exc.errors()[0]['msg']})") from None


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def _uptime(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{sec:02d}"


def render(report: StatusReport, url: str) -> Panel:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("daemon", f"vla-edge {report.version}  pid {report.pid}  up {_uptime(report.uptime_s)}  ({url})")
    for key, value in report.state.items():
        head.add_row(key, str(value))
    head.add_row("chunks", f"{report.chunks_total:.0f} total, {report.chunk_rate_hz:.2f}/s now")
    if report.ticks:
        head.add_row("ticks", ", ".join(f"{k} {v:.0f}" for k, v in report.ticks.items()))
    verdicts = ", ".join(f"{k} {v:.0f}" for k, v in report.verdicts.items()) or "none yet"
    head.add_row("verdicts", verdicts)
    escalations = ", ".join(f"{k} {v:.0f}" for k, v in report.escalations.items()) or "none"
    head.add_row("escalations", escalations)
    if report.confidence:
        head.add_row("confidence", "  ".join(f"{k}={v:.3g}" for k, v in report.confidence.items()))
    if report.stream is not None:
        link = report.stream.link_round_trip_ms
        head.add_row("stream", "link round trip " + ("not measured yet" if link is None else f"{link:.1f} ms"))
        for side, counters in (("daemon", report.stream.daemon), ("controller", report.stream.controller)):
            # refusals first: they are why a controller cannot connect or a command did not run
            refused = {k: v for k, v in counters.items() if k.startswith(("refused_", "rejected_")) and v}
            rest = {k: v for k, v in counters.items() if k not in refused}
            text = ", ".join(f"{k} {v}" for k, v in (*refused.items(), *rest.items())) or "none yet"
            head.add_row(f"  {side}", ("[red]" + text + "[/red]") if refused else text)

    stages = Table(title="stage latency (ms)", title_justify="left", expand=False)
    for col in ("stage", "count", "mean", "p50", "p95"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for name, s in report.stages.items():
        stages.add_row(name, str(s.count), _fmt(s.mean_ms), _fmt(s.p50_ms), _fmt(s.p95_ms))

    h = report.health
    health = Table.grid(padding=(0, 2))
    health.add_column(style="bold")
    health.add_column()
    health.add_row("cpu", f"daemon {_fmt(h.process_cpu_percent, '%')}  board {_fmt(h.system_cpu_percent, '%')}")
    rss = None if h.rss_bytes is None else h.rss_bytes / 2**20
    used = None if h.memory_used_ratio is None else h.memory_used_ratio * 100
    health.add_row("memory", f"daemon {_fmt(rss, ' MiB', 0)}  board {_fmt(used, '% used', 0)}")
    if h.temperatures_c:
        hottest = max(h.temperatures_c.items(), key=lambda kv: kv[1])
        health.add_row("temperature", f"max {hottest[1]:.1f} °C ({hottest[0]}), {len(h.temperatures_c)} sensors")
    health.add_row("throttling", "[red]" + ", ".join(h.throttled) + "[/red]" if h.throttled else "none reported")
    return Panel(Group(head, "", stages, "", health), title="vla-edge status", expand=False)


def run(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        telemetry = load_settings(args.config).telemetry
        url = f"http://{telemetry.metrics_host}:{telemetry.metrics_port}"
    report = fetch_status(url, args.timeout)
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return 0
    Console().print(render(report, url))
    return 0
