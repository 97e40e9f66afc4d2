"""One short demo run shared by the Prometheus and Rerun tests: the daemon on the reference bundle drives the
simulated arm (a child process, real sockets) through a 3-step task with a simulated operator, logging to an .rrd
file, while Debian's Prometheus scrapes its /metrics with the shipped scrape config (deploy/prometheus/)."""

from __future__ import annotations

import importlib.util
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hil.harness import SimRobotProcess, run_task_with_simulated_operator
from hil.prometheus import Prometheus, wait_for
from tests.waiting import GENEROUS_S
from vla_edge.config import load_settings
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.service import Daemon

PROMETHEUS = shutil.which("prometheus")
HAS_RERUN = importlib.util.find_spec("rerun") is not None


@dataclass
class DemoRun:
    result: Any
    judge: Any
    counters: Any  # the scheduler's SchedulerCounters
    metrics: Any  # the daemon's DaemonMetrics (read after the run)
    thresholds: dict[str, float]  # per signal a verdict reports (ConfidenceMonitor.signal_thresholds)
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
                    prometheus = Prometheus(PROMETHEUS, tmp, f"127.0.0.1:{daemon.metrics_server.port}")
                    wait_for(prometheus.ready, 60, "prometheus to be ready")
                    wait_for(lambda: prometheus.scalar('up{job="vla-edge"}') == 1.0, 60, "the first scrape")
                assert daemon.wait_for_controller(GENEROUS_S), "no controller handshake"
                assert daemon.wait_for_camera(GENEROUS_S), "no camera frame"
                result, judge = run_task_with_simulated_operator(daemon, sim, "telemetry-demo", sim.chain(3, seed=5))
                ended = time.time()
                if prometheus is not None:
                    # Everything the daemon did is in the scrapes taken after the task ended (two of them, so that
                    # rate() and increase() have two samples even of a series born in the last moments).
                    last_scrape = 'timestamp(vla_edge_uptime_seconds{job="vla-edge"})'
                    wait_for(lambda: (prometheus.scalar(last_scrape) or 0) > ended + 2.5, 30,
                             "two scrapes after the task ended")
                    prometheus.at = prometheus.scalar(last_scrape)  # every query is asked at that scrape
                run = DemoRun(result, judge, daemon.executor.scheduler.counters, daemon.metrics,
                              daemon.executor.monitor.signal_thresholds, rrd, {}, prometheus)
                logger = daemon.rerun
            if logger is not None:  # closed with the daemon: everything queued has been logged
                run.rerun_counts = {"frames": logger.frames_logged, "chunks": logger.chunks_logged,
                                    "escalations": logger.escalations_logged, "ticks": logger.ticks_logged,
                                    "dropped": logger.dropped}
            yield run  # the daemon is closed (the .rrd flushed); Prometheus keeps its data for the queries
        finally:
            sim.close()
            if prometheus is not None:
                prometheus.stop()
