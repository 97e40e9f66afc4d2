"""The runtime's camera preprocessing, normalisation and flow sampler agree with LeRobot's own functions
(tests/policy/lerobot_conventions.py, run in the LeRobot environment that scripts/setup-lerobot.sh makes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEROBOT_PYTHON = ROOT / ".venv-lerobot" / "bin" / "python"


@pytest.mark.skipif(not LEROBOT_PYTHON.exists(), reason="no LeRobot environment (bash scripts/setup-lerobot.sh)")
def test_preprocessing_and_euler_match_lerobot() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([str(LEROBOT_PYTHON), str(ROOT / "tests" / "policy" / "lerobot_conventions.py")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    diffs = json.loads(done.stdout.strip().splitlines()[-1])
    for key, value in diffs.items():
        # images: OpenCV's bilinear on float32 vs torch's F.interpolate (same sampling, float rounding)
        bound = 2e-3 if key.startswith(("smolvla", "pi0")) else 1e-5
        assert value <= bound, (key, value, diffs)
    print(diffs)
