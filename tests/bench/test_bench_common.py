"""Benchmark plumbing: statistics, whole-process peak memory, worker failures, the torch-missing message."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bench.common import BenchError, Worker, latency_stats, peak_rss_mb


def test_latency_stats_median_and_p99():
    stats = latency_stats([1.0] * 98 + [10.0, 100.0])
    assert stats["median_ms"] == 1.0 and stats["n"] == 100
    assert 10.0 < stats["p99_ms"] < 100.0 and stats["max_ms"] == 100.0
    with pytest.raises(BenchError):
        latency_stats([])


def test_peak_rss_grows_with_touched_memory():
    before = peak_rss_mb()
    block = np.ones(160 * 2**20 // 8)  # 160 MiB, every page written
    assert peak_rss_mb() >= before + 120 or before > 160 + 120  # already high: nothing to learn here
    del block


def test_a_worker_that_cannot_load_says_why():
    with pytest.raises(BenchError, match="no_such_dir|not a bundle|manifest|No such file"):
        Worker.start("broken", {"kind": "ort", "bundle": "/no_such_dir", "precision": "int8", "samples": 1,
                                "instruction": "x", "threads": 1, "seed": 0})


def test_torch_parts_name_the_extra_when_torch_is_missing():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from bench.common import require_torch, BenchError\n"
        "try:\n    require_torch('reference_policy')\nexcept BenchError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "[train]" in out and "reference_policy" in out


def test_cli_rejects_an_unknown_part_without_a_traceback():
    done = subprocess.run([sys.executable, "-m", "vla_edge.cli", "bench", "--parts", "warp"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unknown bench part" in done.stderr and "Traceback" not in done.stderr


def test_running_some_parts_keeps_the_other_parts_in_the_summary(tmp_path):
    import json

    from bench.common import BenchConfig
    from bench.suite import run_parts

    out = tmp_path / "results"
    out.mkdir()
    earlier = {"seconds": 1.0, "targets_met": {"x": True}, "skipped": None}
    (out / "summary.json").write_text(json.dumps({"quick": True, "parts": {"scale": earlier}}))
    summary = run_parts(BenchConfig(out=out, work=tmp_path / "work", quick=True), ["gpu"])
    written = json.loads((out / "summary.json").read_text())
    assert written == summary
    assert written["parts"]["scale"] == earlier and "gpu" in written["parts"]
    # A full run does not inherit a quick run's entries.
    full = run_parts(BenchConfig(out=out, work=tmp_path / "work", quick=False), ["gpu"])
    assert set(full["parts"]) == {"gpu"}
