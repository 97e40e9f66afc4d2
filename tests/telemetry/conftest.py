"""One short demo run shared by the Prometheus and Rerun tests: the daemon on the reference bundle drives the
simulated arm (a child process, real sockets) through a 3-step task with a simulated operator, logging to an .rrd
file, while Debian's Prometheus scrapes its /metrics with the shipped scrape config (deploy/prometheus/)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hil.harness import SimRobotProcess, run_task_with_simulated_operator
from vla_edge.config import load_settings
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.service import Daemon

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus")
HAS_RERUN = importlib.util.find_spec("rerun") is not None


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
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class Prometheus:
    """Debian's prometheus binary on loopback, scraping one target every second, with a throwaway TSDB."""

    def __init__(self, workdir: Path, target: str) -> None:
        text = SCRAPE_CONFIG.read_text()
        # The shipped config, pointed at this daemon and scraping every second (tests must not wait 5 s a scrape).
        assert '"127.0.0.1:9780"' in text and "scrape_interval: 5s" in text, "deploy/prometheus/prometheus.yml changed"
        config = workdir / "prometheus.yml"
        config.write_text(text.replace('"127.0.0.1:9780"', f'"{target}"').replace("scrape_interval: 5s",
                                                                                   "scrape_interval: 1s"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API; the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
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


@dataclass
class DemoRun:
    result: Any
    judge: Any
    counters: Any  # the scheduler's SchedulerCounters
    metrics: Any  # the daemon's DaemonMetrics (read after the run)
    thresholds: dict[str, float]
    rrd: Path | None
    rerun_counts: dict[str, int] = field(default_factory=dict)  # what the logger says it logged
    prometheus: Prometheus | None = None


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if PROMETHEUS is None and not HAS_RERUN:
        pytest.skip("needs Debian's prometheus or the rerun extra (scripts/dev-setup.sh installs both)")
    tmp = tmp_path_factory.mktemp("demo")
    rrd = tmp / "run.rrd" if HAS_RERUN else None
    prometheus = None
    with SimRobotProcess(seed=5) as robot:
        p = robot.ports
        settings = load_settings(
            None,
            camera={"source": "sim", "sim_endpoint": p.endpoint(p.frames)},
            stream={"command_endpoint": p.endpoint(p.commands), "state_endpoint": p.endpoint(p.state), "curve": False},
            task={"state_dir": str(tmp / "state"), "verify_at_checkpoint": True, "checkpoint_every": 3},
            recorder={"enabled": False},
            operator={"enabled": False},
            telemetry={"metrics_port": 0, **({"rerun": str(rrd)} if rrd else {})},
            policy={"bundle": str(REFERENCE_BUNDLE_DIR), "precision": "int8"},
        )
        sim = robot.channel()
        try:
            with Daemon(settings) as daemon:
                if PROMETHEUS is not None:
                    prometheus = Prometheus(tmp, f"127.0.0.1:{daemon.metrics_server.port}")
                    wait_for(prometheus.ready, 60, "prometheus to be ready")
                    wait_for(lambda: prometheus.scalar('up{job="vla-edge"}') == 1.0, 60, "the first scrape")
                assert daemon.wait_for_controller(15.0), "no controller handshake"
                assert daemon.wait_for_camera(10.0), "no camera frame"
                result, judge = run_task_with_simulated_operator(daemon, sim, "telemetry-demo", sim.chain(3, seed=5))
                ended = time.time()
                if prometheus is not None:
                    # Everything the daemon did is in the scrapes taken after the task ended (two of them, so that
                    # rate() and increase() have two samples even of a series born in the last moments).
                    wait_for(lambda: (prometheus.scalar('timestamp(vla_edge_uptime_seconds{job="vla-edge"})') or 0)
                             > ended + 2.5, 30, "two scrapes after the task ended")
                rerun_counts = {}
                if daemon.rerun is not None:
                    logger = daemon.rerun
                    rerun_counts = {"frames": logger.frames_logged, "chunks": logger.chunks_logged,
                                    "escalations": logger.escalations_logged, "ticks": logger.ticks_logged}
                run = DemoRun(result, judge, daemon.executor.scheduler.counters, daemon.metrics,
                              dict(daemon.executor.monitor.thresholds), rrd, rerun_counts, prometheus)
            yield run  # the daemon is closed (the .rrd flushed); Prometheus keeps its data for the queries
        finally:
            sim.close()
            if prometheus is not None:
                prometheus.stop()
