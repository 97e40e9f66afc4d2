"""Debian's Prometheus, run for a test or a screenshot: the shipped scrape config (deploy/prometheus/prometheus.yml)
pointed at one daemon, scraping every second, a throwaway TSDB, queries through its HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

SCRAPE_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "prometheus.yml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class Prometheus:
    """Debian's prometheus binary on loopback, scraping one target every second, with a throwaway TSDB."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        text = SCRAPE_CONFIG.read_text()
        # The shipped config, pointed at this daemon and scraping every second (tests must not wait 5 s a scrape).
        if '"127.0.0.1:9780"' not in text or "scrape_interval: 5s" not in text:
            raise ValueError(f"{SCRAPE_CONFIG} no longer has the target and interval this harness rewrites")
        config = workdir / "prometheus.yml"
        config.write_text(text.replace('"127.0.0.1:9780"', f'"{target}"').replace("scrape_interval: 5s",
                                                                                   "scrape_interval: 1s"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.at: float | None = None
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API, at ``self.at`` (Unix seconds) when set, else now."""
        params = {"query": promql}
        if self.at is not None:
            # Pinned: once the daemon stops, Prometheus marks its series stale and "now" would find none.
            params["time"] = f"{self.at:.3f}"
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {promql!r} failed: {body}")
        return body["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {r["metric"][label]: float(r["value"][1]) for r in self.query(promql)}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
