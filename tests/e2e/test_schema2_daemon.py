"""The daemon runs schema-2 bundles unlike the reference end to end: real ZeroMQ sockets, real ONNX Runtime, the
generic simulated arm (hil.generic_arm) behind the real controller client, one camera stream per view at its own
resolution, and the step ended by the bundle's own rule.

`hil.generic_arm.run_bundle_step` is the harness: any schema-2 bundle directory (the small ones built here, or a
LeRobot policy imported with `vla-edge import lerobot`) runs one task step with its chunks actuated over the wire.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from hil.generic_arm import BundleRun, run_bundle_step
from tests.policy import tiny_bundles as tiny
from vla_edge.bundle import load_bundle
from vla_edge.policy import manifest_v2

pytestmark = pytest.mark.slow


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


def test_take_over_in_the_bundles_action_space(tmp_path: Path) -> None:
    """The operator's take-over on an arm that is not the reference's: the console's two axes move the first two
    joints from where the arm is, the grip key sets the dimension named gripper, the rest holds; 'done' ends it."""
    from vla_edge.operator.escalation import TeleopCommand

    directory = tiny.build_flow_bundle(tmp_path / "flow")
    commands = [TeleopCommand(dx=0.1), TeleopCommand(dx=0.1, dy=-0.05, grip=0.8), TeleopCommand(done=True)]
    run = run_bundle_step(directory, tmp_path, "pick up the red cube", teleop=commands)
    assert run.report.outcome == "done" and "operator" in run.report.reason, run.report
    assert run.actuated and all(v.shape == (tiny.FLOW_A,) for v in run.actuated)
    start, end = run.actuated[0], run.actuated[-1]
    np.testing.assert_allclose(end[:2] - start[:2], [0.2, -0.05], atol=1e-5)  # joint values, not [0, 1] targets
    assert end[2] == pytest.approx(0.8)
    _assert_within_limits(run, directory)
