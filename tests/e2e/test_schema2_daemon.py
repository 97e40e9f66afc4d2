"""The daemon runs schema-2 bundles unlike the reference end to end: real ZeroMQ sockets, real ONNX Runtime, the
generic simulated arm (hil.generic_arm) behind the real controller client, one camera stream per view at its own
resolution, and the step ended by the bundle's own rule.

`run_bundle_step` is the harness: any schema-2 bundle directory (the small ones built here, or a LeRobot policy
imported with `vla-edge import lerobot`) runs one task step with its chunks actuated over the wire.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hil.generic_arm import GenericSimRobot, ViewStream, capture_size
from hil.harness import SimPorts, free_port
from tests.policy import tiny_bundles as tiny
from vla_edge.bundle import load_bundle
from vla_edge.config import StreamSettings, load_settings
from vla_edge.policy import manifest_v2
from vla_edge.service import Daemon
from vla_edge.task import StepReport

pytestmark = pytest.mark.slow


@dataclass
class BundleRun:
    report: StepReport
    actuated: list[np.ndarray]  # every command the arm executed, in order
    chunks_accepted: int
    actions_sent: int
    chunk_shapes: list[tuple[int, ...]]
    latencies_ms: list[float]


def run_bundle_step(bundle_dir: Path, tmp_path: Path, instruction: str, precision: str = "fp32",
                    step_timeout_s: float = 60.0, **extra: dict) -> BundleRun:
    """One task step of ``bundle_dir`` on the generic arm, through the whole daemon. Returns what happened."""
    manifest = manifest_v2(load_bundle(bundle_dir))
    ports = SimPorts.pick()
    views = []
    for view in manifest.observation.cameras:
        height, width = capture_size(view.height, view.width)
        views.append(ViewStream(view.name, f"tcp://127.0.0.1:{free_port()}", height, width))
    stream = StreamSettings(command_endpoint=ports.endpoint(ports.commands),
                            state_endpoint=ports.endpoint(ports.state), curve=False)
    robot = GenericSimRobot(manifest, stream, views, seed=1)
    stop = threading.Event()
    thread = threading.Thread(target=robot.run, args=(stop,), daemon=True)
    first, *others = views
    overrides: dict[str, dict] = {
        "camera": {"source": "sim", "sim_endpoint": first.endpoint,
                   "views": {v.name: {"source": "sim", "sim_endpoint": v.endpoint} for v in others}},
        "stream": {"command_endpoint": stream.command_endpoint, "state_endpoint": stream.state_endpoint,
                   "curve": False},
        "task": {"state_dir": str(tmp_path / "state"), "step_timeout_s": step_timeout_s},
        "recorder": {"enabled": False},
        "operator": {"enabled": False},
        "telemetry": {"metrics_port": 0},
        "policy": {"bundle": str(bundle_dir), "precision": precision, "num_samples": 4},
    }
    for section, values in extra.items():
        overrides.setdefault(section, {}).update(values)
    settings = load_settings(None, **overrides)
    shapes: list[tuple[int, ...]] = []
    thread.start()
    try:
        with Daemon(settings) as daemon:
            assert daemon.wait_for_controller(20.0), "no controller handshake"
            assert daemon.wait_for_camera(20.0), "no camera frame"
            daemon.executor.observers.append(_ShapeObserver(shapes))
            report = daemon.executor.run_step(0, instruction, threading.Event())
            counters = daemon.executor.scheduler.counters
            accepted, sent, latencies = counters.chunks_accepted, counters.actions_sent, list(counters.latencies_ms)
    finally:
        stop.set()
        thread.join(timeout=5)
        robot.close()
    return BundleRun(report, robot.executed(), accepted, sent, shapes, latencies)


class _ShapeObserver:
    def __init__(self, shapes: list) -> None:
        self.shapes = shapes

    def on_tick(self, *args: object) -> None: ...

    def on_step_end(self, *args: object) -> None: ...

    def on_chunk(self, planned) -> None:  # noqa: ANN001
        self.shapes.append(tuple(planned.samples.actions.shape))


def _with_thresholds(directory: Path, thresholds: dict[str, float]) -> Path:
    """Calibrated thresholds in the manifest, as `vla-edge calibrate --write-bundle` leaves them."""
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["confidence_thresholds"] = thresholds
    path.write_text(json.dumps(data))
    return directory


def _assert_within_limits(run: BundleRun, directory: Path) -> None:
    space = manifest_v2(load_bundle(directory)).action_space
    for values in run.actuated:
        assert np.all(values >= np.asarray(space.low) - 1e-6) and np.all(values <= np.asarray(space.high) + 1e-6)


def test_flow_bundle_two_views_runs_its_chunks_over_the_wire(tmp_path: Path) -> None:
    """SmolVLA-like: two views at other resolutions, padded state/action, K/V broadcast, 5 of 6 actions per chunk,
    time 1 → 0; the step ends after max_chunks = 3 chunks were executed."""
    directory = _with_thresholds(tiny.build_flow_bundle(tmp_path / "flow"),
                                 {"spread": 0.05, "consistency": 20.0, "ood": 50.0, "limits": 0.0, "jerk": 1.05})
    started = time.monotonic()
    run = run_bundle_step(directory, tmp_path, "pick up the red cube")
    assert run.report.outcome == "done", run.report
    assert "3 chunk(s) executed" in run.report.reason
    # 15 actions sent; under load the last one or two may still be in flight, or dropped as late, when it ends
    assert run.actions_sent >= 3 * tiny.FLOW_EXECUTE and len(run.actuated) >= tiny.FLOW_EXECUTE
    assert run.chunks_accepted >= 3 and all(s == (4, tiny.FLOW_EXECUTE, tiny.FLOW_A) for s in run.chunk_shapes)
    assert all(v.shape == (tiny.FLOW_A,) for v in run.actuated)
    _assert_within_limits(run, directory)
    print(f"\nflow bundle: {len(run.actuated)} actions in {time.monotonic() - started:.1f} s, chunk latency median "
          f"{np.median(run.latencies_ms):.1f} ms")


def test_diffusion_bundle_with_history_runs_until_its_time_is_up(tmp_path: Path) -> None:
    """Diffusion Policy-like: 2 observations of history, DDIM with 10 steps, int64 timesteps, executes 6 of 10
    actions from index 1; the step ends after max_seconds = 2."""
    sampler = {"kind": "ddim", "num_train_timesteps": 100, "num_inference_steps": 10,
               "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon", "clip_sample": True}
    directory = _with_thresholds(tiny.build_diffusion_bundle(tmp_path / "dp", sampler),
                                 {"spread": 1.0, "consistency": 5.0, "limits": 0.0, "jerk": 1.05})
    run = run_bundle_step(directory, tmp_path, "task")
    assert run.report.outcome == "done", run.report
    assert "2 s elapsed" in run.report.reason
    assert len(run.actuated) >= 6 and all(s == (4, 6, tiny.DP_A) for s in run.chunk_shapes)
    _assert_within_limits(run, directory)


def test_single_pass_bundle_ends_on_its_success_detector(tmp_path: Path) -> None:
    """ACT-like: encoder memory with batch axis 1, single-pass decoder (K = 1), an auxiliary success detector."""
    directory = _with_thresholds(tiny.build_single_pass_bundle(tmp_path / "act"),
                                 {"consistency": 50.0, "limits": 0.0, "jerk": 1.05})
    run = run_bundle_step(directory, tmp_path, "whatever the operator types")
    assert run.report.outcome == "done", run.report
    assert "success detector" in run.report.reason or "chunk(s) executed" in run.report.reason
    assert run.chunk_shapes and all(s == (1, tiny.ACT_H, tiny.ACT_A) for s in run.chunk_shapes)
    assert len(run.actuated) >= 1
