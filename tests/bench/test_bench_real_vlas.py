"""The real-VLA bench part on its quick size: a random-weight ACT built from its LeRobot config, imported, and timed
per chunk in LeRobot eager and in the three ORT variants, interleaved, with memory and parity in the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vla_edge.paths import REPO_ROOT

LEROBOT_PYTHON = REPO_ROOT / ".venv-lerobot" / "bin" / "python"


def _has_lerobot() -> bool:
    """LeRobot >= 0.5 installed in .venv-lerobot, read from its dist-info: no interpreter started at collection
    (importing LeRobot's π0 took over 300 s at load average 30 here)."""
    for info in (REPO_ROOT / ".venv-lerobot" / "lib").glob("python3*/site-packages/lerobot-*.dist-info"):
        version = tuple(int(p) for p in info.name.removeprefix("lerobot-").removesuffix(".dist-info").split(".")[:2]
                        if p.isdigit())
        return LEROBOT_PYTHON.exists() and version >= (0, 5)
    return False


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.skipif(not _has_lerobot(), reason="no LeRobot >= 0.5 environment: run scripts/setup-lerobot.sh")
def test_quick_real_vlas_times_lerobot_and_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.real_vlas", "--quick", "--policies", "act", "--out", str(out), "--work",
         str(tmp_path / "work")], capture_output=True, text=True, timeout=7000, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    result = json.loads((out / "real_vlas-quick.json").read_text())
    assert "RANDOM WEIGHTS" in result["label"]
    row = result["policies"]["act"]
    assert row["random_weights"] and row["interleaved"] and row["size"] == "small"
    assert set(row["latency"]) == {"lerobot-eager-fp32", "ort-fp32", "ort-int8", "ort-int4"}
    assert all(stats["n"] == 6 and stats["median_ms"] > 0 for stats in row["latency"].values())
    for variant in ("ort-fp32", "ort-int8", "ort-int4"):
        interval = row["speedup_vs_lerobot"][variant]
        assert interval["low"] <= interval["median"] <= interval["high"]
    assert all(m["peak_rss_mb"] > 50 for m in row["memory"].values())
    assert row["parity"]["fp32"]["passed"] and row["parity"]["fp32"]["action_mae"] < 1e-3
    assert "lerobot-eager-fp32" in done.stdout and "RANDOM WEIGHTS" in done.stdout


@pytest.mark.parametrize("precisions", ["int8", "fp32,fp16", "fp32,int3"])
def test_precisions_without_fp32_or_unknown_are_one_error_line(precisions: str) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.real_vlas", "--precisions", precisions, "--policies", "act"],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.endswith(f"--precisions: fp32 and any of int8, int4 (got {precisions!r})")
    assert "Traceback" not in done.stderr
