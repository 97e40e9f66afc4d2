"""`vla-edge bench --quick` on a subset of parts, as CI runs it: real processes, sockets and ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_bench_writes_tables_json_and_plots(tmp_path: Path):
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "vla_edge.cli", "bench", "--quick", "--parts", "reference", "scale", "jitter", "gpu",
         "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=1100,  # many minutes under load (scripts/stress-test.sh)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "targets" in done.stdout
    for part in ("reference_policy", "scale_model", "jitter"):
        assert (out / f"{part}.json").is_file() and (out / f"{part}.png").stat().st_size > 1000

    reference = json.loads((out / "reference_policy.json").read_text())
    assert reference["same_weights_max_abs_action_diff_torch_vs_ort_fp32"] < 1e-4  # really the same weights
    for variant in ("torch-eager-fp32", "ort-fp32", "ort-int8", "ort-int4"):
        v = reference["variants"][variant]
        assert v["n"] >= 20 and 0 < v["median_ms"] <= v["p99_ms"]
        assert 30 < v["peak_rss_mb"] < 4000
    # Each variant measured in its own process: ONNX Runtime without torch must be smaller than torch.
    assert reference["variants"]["ort-int8"]["memory_ratio_vs_torch"] > 1.5
    int8 = reference["variants"]["ort-int8"]
    assert int8["peak_rss_with_camera_library_mb"] > int8["peak_rss_mb"] + 5  # OpenCV was really loaded on top

    scale = json.loads((out / "scale_model.json").read_text())
    assert "RANDOM WEIGHTS" in scale["label"]
    assert scale["bandwidth"]["limit_gbs"] > 0.5 and scale["step_bandwidth_floor_ms"] > 0
    assert scale["variants"]["prepacked"]["steps"]["1"]["median_ms"] > 0

    jitter = json.loads((out / "jitter.json").read_text())
    loaded = jitter["with_inference"]
    assert loaded["ticks_due"] >= 450  # 10 s at 50 Hz
    assert jitter["inference"]["chunks"] > 10  # the policy really ran beside the loop
    assert jitter["controller_counters"].get("executed", 0) > 0.5 * loaded["ticks_run"]  # actions crossed the socket
    assert 0.0 <= loaded["on_time_share"] <= 1.0
    realtime = jitter["with_inference_realtime_tick"]
    assert "skipped" in realtime or realtime["ticks_due"] >= 450
    assert len(jitter["load_average_before_1_5_15m"]) == 3

    gpu = json.loads((out / "gpu.json").read_text())
    assert gpu.get("skipped") == "no GPU on this machine" or gpu["variants"]
