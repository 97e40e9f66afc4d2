"""What the recorder writes, read back by LeRobot's own `LeRobotDataset` (LeRobot 0.4.4, dataset format v3.0).

The recorder runs here (the project's venv, no LeRobot); the reader runs in LeRobot's own environment,
``.venv-lerobot`` (``scripts/setup-lerobot.sh``), through tests/recorder/lerobot_read.py. The checks compare what
LeRobot returns with what the recorder was given: episodes, frames, tasks, the intervention flag, every vector
exactly, every camera view frame by frame, and the image statistics against the frames LeRobot decodes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recording_cases import EPISODES, FEATURES, FPS, FRONT, WRIST, bar_width, episode_frames, first_frame, read_bar  # noqa: E402

from vla_edge.recorder import EpisodeRecorder  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LEROBOT_PYTHON = REPO / ".venv-lerobot" / "bin" / "python"
HERE = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not LEROBOT_PYTHON.exists(),
        reason="LeRobot's environment .venv-lerobot is missing (run bash scripts/setup-lerobot.sh): "
        "the read-back by LeRobot itself did not run",
    ),
]


def read_with_lerobot(tmp_path: Path, *datasets: str) -> list[tuple[dict, dict]]:
    out = tmp_path / "lerobot-read"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_LEROBOT_HOME=str(tmp_path / "hf-lerobot"),
               HF_HOME=str(tmp_path / "hf-home"))
    proc = subprocess.run([str(LEROBOT_PYTHON), str(HERE / "lerobot_read.py"), str(out), *datasets],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = []
    for number in range(len(datasets)):
        result = json.loads((out / f"{number}.json").read_text())
        assert "error" not in result, f"LeRobot refused {datasets[number]}: {result.get('traceback')}"
        with np.load(out / f"{number}.npz") as images:
            results.append((result, {k: images[k] for k in images.files}))
    print(f"read by LeRobot {results[0][0]['lerobot']} (video decoder: {results[0][0]['backend']})")
    return results


def record(root: Path, numbers, dataset_format: str = "v3.0") -> None:
    recorder = EpisodeRecorder(root, FPS, FEATURES, dataset_format=dataset_format)
    for number in numbers:
        for frame in episode_frames(number):
            recorder.add_frame(*frame)
        recorder.end_episode(success=EPISODES[number][3])


def expected_frames(numbers) -> list[dict]:
    rows = []
    for number in numbers:
        for i, (images, state, action, intervention, instruction, actual) in enumerate(episode_frames(number)):
            rows.append({"episode_index": number, "frame_index": i, "task": instruction, "state": state,
                         "action": action, "actual": actual, "intervention": intervention, "images": images,
                         "env": np.asarray(FEATURES.instruction_vector(instruction), np.float32)})
    return rows


def check_dataset(result: dict, images: dict, numbers) -> None:
    """Everything LeRobot read equals what the recorder was given for episodes ``numbers`` (recorded in order)."""
    expected = expected_frames(numbers)
    assert result["num_episodes"] == len(numbers) and result["num_frames"] == len(expected)
    assert sorted(result["video_keys"]) == sorted([FRONT, WRIST])
    for episode, number in zip(result["episodes"], numbers, strict=True):
        length, instruction, intervened, success = EPISODES[number]
        assert episode["length"] == length and episode["tasks"] == [instruction]
        assert episode["success"] is success and episode["intervention_frames"] == len(intervened)
    for got, want in zip(result["frames"], expected, strict=True):
        assert (got["episode_index"], got["frame_index"], got["task"]) == (
            numbers.index(want["episode_index"]), want["frame_index"], want["task"])
        assert got["intervention"] is bool(want["intervention"])
        np.testing.assert_array_equal(np.float32(got["action"]), want["action"])  # exact: float32 both ways
        np.testing.assert_array_equal(np.float32(got["observation.state"]), want["state"])
        np.testing.assert_array_equal(np.float32(got["actual"]), want["actual"])
        np.testing.assert_array_equal(np.float32(got["observation.environment_state"]), want["env"])
    for key in (FRONT, WRIST):
        decoded = images[key]
        assert decoded.shape[0] == len(expected)
        for g, (frame, want) in enumerate(zip(decoded, expected, strict=True)):
            source_g = first_frame(want["episode_index"]) + want["frame_index"]
            assert abs(read_bar(frame) - bar_width(source_g)) <= 1, f"{key} frame {g} is not the recorded frame"
            error = np.abs(frame.astype(int) - want["images"][key].astype(int)).mean()
            assert error < 6.0, f"{key} frame {g}: mean abs error {error:.1f} of 255 after video coding"


def check_image_stats(result: dict, images: dict) -> None:
    """stats.json's image statistics describe the frames a reader decodes (to 1e-3 on the 0-1 scale)."""
    for key in (FRONT, WRIST):
        pixels = images[key].reshape(-1, 3).astype(np.float64) / 255.0
        stats = result["stats"][key]
        np.testing.assert_allclose(np.ravel(stats["mean"]), pixels.mean(axis=0), atol=1e-3)
        np.testing.assert_allclose(np.ravel(stats["std"]), pixels.std(axis=0), atol=1e-3)
        np.testing.assert_allclose(np.ravel(stats["min"]), pixels.min(axis=0), atol=1e-3)
        np.testing.assert_allclose(np.ravel(stats["max"]), pixels.max(axis=0), atol=1e-3)
        assert stats["count"] == [images[key].shape[0]]


def test_lerobot_reads_episodes_views_vectors_and_flags(tmp_path):
    root = tmp_path / "ds"
    record(root, [0, 1, 2])
    record(root, [3])  # a new recorder (a daemon restart) appends to the same files
    (result, images), = read_with_lerobot(tmp_path, str(root))
    assert result["codebase_version"] == "v3.0"
    check_dataset(result, images, [0, 1, 2, 3])
    check_image_stats(result, images)
    # Vector statistics are LeRobot's: e.g. the mean action over every frame.
    actions = np.stack([f["action"] for f in expected_frames([0, 1, 2, 3])]).astype(np.float64)
    np.testing.assert_allclose(result["stats"]["action"]["mean"], actions.mean(axis=0), rtol=1e-6)
    # What LeRobot's policies take: the views, the state and the instruction words in, the action out;
    # `actual` and `intervention` are recorded for people and tools, not fed to a policy.
    features = result["policy_features"]
    assert {k: f["type"] for k, f in features.items()} == {
        FRONT: "VISUAL", WRIST: "VISUAL", "observation.state": "STATE",
        "observation.environment_state": "ENV", "action": "ACTION"}
    assert features[WRIST]["shape"] == [3, 48, 64]


def test_lerobot_reads_a_dataset_whose_append_crashed_and_the_repaired_one(tmp_path):
    """The recorder process dies after each file of an episode's commit in turn (os._exit, like kill -9).
    LeRobot reads the dataset as it was left, whole (the episodes before); the next recorder repairs it and
    appends; LeRobot reads that too."""
    probe = subprocess.run([sys.executable, str(HERE / "crash_writer.py"), str(tmp_path / "probe"), "0"],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    installs = int(probe.stdout.split()[-1])
    assert installs == 7  # data, 2 videos, tasks (a new one), episode row, stats, info
    crashed, repaired = [], []
    for die_at in range(1, installs + 1):
        root = tmp_path / f"crash-{die_at}"
        proc = subprocess.run([sys.executable, str(HERE / "crash_writer.py"), str(root), str(die_at)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 17, proc.stderr
        crashed.append(str(root))
        if die_at < installs:  # the last install is info.json: the episode is committed, nothing to repair
            fixed = tmp_path / f"repaired-{die_at}"
            shutil.copytree(root, fixed)
            record(fixed, [3])
            repaired.append(str(fixed))
    results = read_with_lerobot(tmp_path, *crashed, *repaired)
    for die_at, (result, images) in enumerate(results[:installs], start=1):
        check_dataset(result, images, [0, 1, 2] if die_at == installs else [0, 1])
    for result, images in results[installs:]:
        check_dataset(result, images, [0, 1, 3])
        check_image_stats(result, images)


def test_lerobot_converts_and_reads_the_v21_option(tmp_path):
    """``recorder.dataset_format = "v2.1"`` for older readers: LeRobot 0.4's own converter takes it to v3.0."""
    root = tmp_path / "v21" / "ds"
    record(root, [0, 1], dataset_format="v2.1")
    record(root, [2], dataset_format="v2.1")
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1"
    (result, images), = read_with_lerobot(tmp_path, f"v21:{root}")
    assert result["codebase_version"] == "v3.0"
    check_dataset(result, images, [0, 1, 2])
