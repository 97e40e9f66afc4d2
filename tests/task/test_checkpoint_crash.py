"""Checkpoints survive a SIGKILL of the process running the task, and a file cut short by a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.waiting import GENEROUS_S
from vla_edge.checkpoint import CheckpointStore, TaskState, state_checksum

WORKER = Path(__file__).with_name("scripted_executor.py")


def _state(task_id: str, next_step: int) -> TaskState:
    return TaskState(task_id=task_id, steps_sha256="0" * 64, next_step=next_step, counters={"checkpoints": next_step})


def test_save_load_checksum_and_keep_last_n(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for step in range(1, 6):
        store.save(_state("a", step))
    paths = store.paths("a")
    assert [p.name for p in paths] == ["ckpt-00000003.json", "ckpt-00000004.json", "ckpt-00000005.json"]
    latest = store.load_latest("a")
    assert latest.next_step == 5 and latest.checksum == state_checksum(latest)
    assert store.load_latest("other") is None
    assert not list((tmp_path / "a").glob(".ckpt-*")), "no temp file may be left behind"


def test_truncated_or_tampered_latest_falls_back_to_previous(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save(_state("a", 3))
    newest = store.save(_state("a", 6))
    # A crash in the middle of writing: the file holds only its first bytes.
    newest.write_bytes(newest.read_bytes()[:40])
    assert store.load_latest("a").next_step == 3
    assert "skipping unreadable checkpoint" in caplog.text
    # Valid JSON whose content was changed after sealing: the checksum catches it.
    newest.write_text(store.paths("a")[0].read_text().replace('"next_step": 3', '"next_step": 9'))
    assert store.load_latest("a").next_step == 3
    assert "checksum mismatch" in caplog.text
    # The next save still gets a fresh sequence number and becomes the newest.
    store.save(_state("a", 7))
    assert store.load_latest("a").next_step == 7


@pytest.mark.slow
def test_sigkill_mid_task_resumes_from_last_checkpoint(tmp_path):
    state_dir, log = tmp_path / "state", tmp_path / "steps.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    # Checkpoints every 3 steps: step 7 is mid-segment after the second checkpoint (next_step 6). The worker stops
    # there until killed, so the kill lands mid-segment however slowly this test gets to run.
    proc = subprocess.Popen([sys.executable, str(WORKER), str(state_dir), str(log), "7"], env=env)
    store = CheckpointStore(state_dir)
    deadline = time.monotonic() + 10 * GENEROUS_S
    try:
        # Kill it once at least two checkpoints exist and it is in the middle of the next segment.
        while time.monotonic() < deadline:
            latest = store.load_latest("crash-demo")
            started = log.read_text().split() if log.exists() else []
            if latest is not None and latest.next_step >= 6 and len(started) >= latest.next_step + 2:
                break
            assert proc.poll() is None, "the worker ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the worker never reached its second checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    killed_at = store.load_latest("crash-demo").next_step
    started_before = [int(s) for s in log.read_text().split()]
    assert max(started_before) > killed_at, "the kill must land after the checkpoint, mid-segment"

    log.write_text("")
    subprocess.run([sys.executable, str(WORKER), str(state_dir), str(log)], env=env, check=True,
                   timeout=10 * GENEROUS_S)
    lines = log.read_text().splitlines()
    resumed_steps = [int(s) for s in lines[:-1]]
    assert resumed_steps[0] == killed_at, "resume must start at the checkpoint's next step, not step 0"
    assert resumed_steps == list(range(killed_at, 12))
    assert lines[-1] == f"completed resumed_from={killed_at}"
