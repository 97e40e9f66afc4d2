"""The files the recorder writes, read back with pyarrow and PyAV (fast; LeRobot's own reader is in
test_lerobot_roundtrip.py): the v3.0 layout, appending to shared files, rolling over to new ones, repairing what
a crashed append left, and the v2.1 option."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recording_cases import EPISODES, FEATURES, FPS, FRONT, WRIST, bar_width, episode_frames, read_bar  # noqa: E402

from vla_edge.recorder import CameraView, EpisodeRecorder, RecorderError, RecordingFeatures  # noqa: E402
from vla_edge.recorder.stats import PixelHistogram  # noqa: E402

HERE = Path(__file__).resolve().parent


def record(recorder: EpisodeRecorder, number: int):
    for frame in episode_frames(number):
        recorder.add_frame(*frame)
    return recorder.end_episode(EPISODES[number][3])


def episode_rows(root: Path) -> list[dict]:
    return [r for path in sorted(root.glob("meta/episodes/*/*.parquet")) for r in pq.read_table(path).to_pylist()]


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_v30_episodes_share_files_and_describe_where_they_are(tmp_path):
    root = tmp_path / "ds"
    recorder = EpisodeRecorder(root, FPS, FEATURES)
    summaries = [record(recorder, n) for n in (0, 1)]
    summaries.append(record(EpisodeRecorder(root, FPS, FEATURES), 2))  # a restart appends to the same files
    assert [s.episode_index for s in summaries] == [0, 1, 2]
    assert {s.data_path.name for s in summaries} == {"file-000.parquet"}

    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 28, 3)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["features"][WRIST]["shape"] == [48, 64, 3] and info["features"][FRONT]["info"]["video.codec"] == "h264"
    assert info["features"]["actual"]["names"] == ["gripper_x", "gripper_y", "grip", "done"]
    assert info["features"]["observation.environment_state"]["names"] == ["red", "blue", "left", "top"]

    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(r["dataset_from_index"], r["dataset_to_index"]) for r in rows] == [(0, 12), (12, 21), (21, 28)]
    assert [r[f"videos/{FRONT}/from_timestamp"] for r in rows] == pytest.approx([0.0, 1.2, 2.1])
    assert [r[f"videos/{WRIST}/to_timestamp"] for r in rows] == pytest.approx([1.2, 2.1, 2.8])
    assert [r["tasks"] for r in rows] == [[EPISODES[n][1]] for n in range(3)]
    assert [(r["success"], r["intervention_frames"]) for r in rows] == [(True, 0), (False, 4), (False, 0)]
    assert rows[1]["stats/intervention/mean"] == pytest.approx([4 / 9])

    data = pq.read_table(root / "data/chunk-000/file-000.parquet").to_pylist()
    assert [r["index"] for r in data] == list(range(28))
    assert [r["episode_index"] for r in data] == [0] * 12 + [1] * 9 + [2] * 7
    assert data[13]["timestamp"] == pytest.approx(0.1) and data[13]["frame_index"] == 1
    assert [r["intervention"] for r in data[12:21]] == [False, False, False, True, True, True, True, False, False]
    np.testing.assert_array_equal(np.float32(data[14]["action"]), episode_frames(1)[2][2])

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("__index_level_0__").to_pylist() == [EPISODES[n][1] for n in range(3)]
    assert b"pandas" in tasks.schema.metadata  # LeRobot reads it with pandas: the task text is the index

    for key in (FRONT, WRIST):
        frames = decode(root / f"videos/{key}/chunk-000/file-000.mp4")
        assert len(frames) == 28  # three episodes back to back, no frame lost or repeated at the joins
        assert [read_bar(f) for f in frames] == pytest.approx([bar_width(g) for g in range(28)], abs=1)
    assert not list((root / ".staging").iterdir()), "no staging file may be left behind"


def test_image_statistics_are_those_of_the_decoded_video(tmp_path):
    root = tmp_path / "ds"
    recorder = EpisodeRecorder(root, FPS, FEATURES)
    record(recorder, 0)
    decoded, source = PixelHistogram(), PixelHistogram()
    for frame in decode(root / f"videos/{FRONT}/chunk-000/file-000.mp4"):
        decoded.add(frame)
    for images, *_ in episode_frames(0):
        source.add(images[FRONT])
    stats = json.loads((root / "meta/stats.json").read_text())[FRONT]
    assert np.array(stats["mean"]).shape == (3, 1, 1) and stats["count"] == [12]
    assert np.ravel(stats["mean"]) == pytest.approx(np.ravel(decoded.stats()["mean"]), abs=1e-9)
    assert np.ravel(stats["q50"]) == pytest.approx(np.ravel(decoded.stats()["q50"]), abs=1e-9)
    # Lossy coding moves them: the pre-encoding frames would have given other figures.
    assert np.abs(np.ravel(stats["std"]) - np.ravel(source.stats()["std"])).max() > 1e-4


def test_files_roll_over_at_their_size_limit(tmp_path):
    root = tmp_path / "ds"
    recorder = EpisodeRecorder(root, FPS, FEATURES, data_file_mb=0.004, video_file_mb=0.008)
    for n in range(4):
        record(recorder, n)
    rows = episode_rows(root)
    assert [r["episode_index"] for r in rows] == [0, 1, 2, 3]
    data_files = [(r["data/chunk_index"], r["data/file_index"]) for r in rows]
    video_files = [r[f"videos/{FRONT}/file_index"] for r in rows]
    assert len(set(data_files)) > 1 and len(set(video_files)) > 1
    assert len(list(root.glob("meta/episodes/*/*.parquet"))) > 1  # the episode rows roll over too
    for r in rows:  # every episode is where its row says, at its timestamps
        path = root / f"videos/{FRONT}/chunk-000/file-{r[f'videos/{FRONT}/file_index']:03d}.mp4"
        frames = decode(path)
        first = round(r[f"videos/{FRONT}/from_timestamp"] * FPS)
        assert read_bar(frames[first]) == pytest.approx(bar_width(r["dataset_from_index"]), abs=1)
        table = pq.read_table(root / f"data/chunk-000/file-{r['data/file_index']:03d}.parquet")
        assert r["dataset_from_index"] in table.column("index").to_pylist()


@pytest.mark.slow
def test_each_crash_point_of_an_append_is_repaired_on_the_next_open(tmp_path):
    """A recorder process killed after each file of a commit in turn (os._exit): the next recorder sees the
    episodes committed before, cuts off the leftovers, and appends at the right place."""
    probe = subprocess.run([sys.executable, str(HERE / "crash_writer.py"), str(tmp_path / "probe"), "0"],
                           capture_output=True, text=True, timeout=300)
    installs = int(probe.stdout.split()[-1])
    for die_at in range(1, installs + 1):
        root = tmp_path / f"crash-{die_at}"
        proc = subprocess.run([sys.executable, str(HERE / "crash_writer.py"), str(root), str(die_at)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 17, proc.stderr
        committed = 3 if die_at == installs else 2
        recorder = EpisodeRecorder(root, FPS, FEATURES)
        assert recorder.total_episodes == committed
        assert record(recorder, 3).episode_index == committed
        frames = 12 + 9 + (7 if committed == 3 else 0) + 5
        info = json.loads((root / "meta/info.json").read_text())
        assert (info["total_episodes"], info["total_frames"]) == (committed + 1, frames)
        assert pq.read_metadata(root / "data/chunk-000/file-000.parquet").num_rows == frames
        assert len(decode(root / f"videos/{WRIST}/chunk-000/file-000.mp4")) == frames
        rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
        assert [r["episode_index"] for r in rows] == list(range(committed + 1))
        tasks = pq.read_table(root / "meta/tasks.parquet").column("__index_level_0__").to_pylist()
        assert tasks == [EPISODES[n][1] for n in ((0, 1, 2, 3) if committed == 3 else (0, 1, 3))]
        stats = json.loads((root / "meta/stats.json").read_text())
        assert stats["action"]["count"] == [frames], f"crash after install {die_at}: stats not repaired"
        assert not list((root / ".staging").iterdir())


def test_crash_mid_episode_loses_only_that_episode(tmp_path):
    root = tmp_path / "ds"
    recorder = EpisodeRecorder(root, FPS, FEATURES)
    record(recorder, 0)
    for frame in episode_frames(1)[:3]:  # an episode in progress when the process dies: never ended
        recorder.add_frame(*frame)
    before = (root / "meta/info.json").read_text()
    fresh = EpisodeRecorder(root, FPS, FEATURES)  # the process died; a new recorder starts
    assert fresh.total_episodes == 1 and (root / "meta/info.json").read_text() == before
    assert not list((root / ".staging").iterdir()), "the dead writer's staging video is cleaned up"
    assert record(fresh, 2).episode_index == 1


def test_v21_option_writes_one_file_per_episode(tmp_path):
    root = tmp_path / "ds"
    recorder = EpisodeRecorder(root, FPS, FEATURES, dataset_format="v2.1")
    record(recorder, 0)
    record(EpisodeRecorder(root, FPS, FEATURES, dataset_format="v2.1"), 1)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and (info["total_episodes"], info["total_videos"]) == (2, 4)
    table = pq.read_table(root / "data/chunk-000/episode_000001.parquet")
    assert table.column("index").to_pylist() == list(range(12, 21))
    assert len(decode(root / f"videos/chunk-000/{WRIST}/episode_000001.mp4")) == 9
    lines = [json.loads(line) for line in (root / "meta/episodes_stats.jsonl").read_text().splitlines()]
    assert set(lines[1]["stats"][FRONT]) == {"min", "max", "mean", "std", "count"}
    with pytest.raises(RecorderError, match="v2.1 dataset"):
        EpisodeRecorder(root, FPS, FEATURES)  # v3.0 does not append to a v2.1 dataset


def test_bad_frames_and_incompatible_datasets_are_refused(tmp_path):
    recorder = EpisodeRecorder(tmp_path, FPS, FEATURES)
    images, state, action, _, instruction, actual = episode_frames(0)[0]
    with pytest.raises(RecorderError, match="uint8"):
        recorder.add_frame({**images, WRIST: np.zeros((64, 64, 3), np.uint8)}, state, action, False, instruction, actual)
    with pytest.raises(RecorderError, match="views"):
        recorder.add_frame({FRONT: images[FRONT]}, state, action, False, instruction, actual)
    with pytest.raises(RecorderError, match="finite"):
        recorder.add_frame(images, np.array([0, np.nan, 0]), action, False, instruction, actual)
    with pytest.raises(RecorderError, match="action"):
        recorder.add_frame(images, state, action[:3], False, instruction, actual)
    with pytest.raises(RecorderError, match="actual"):
        recorder.add_frame(images, state, action, False, instruction)
    with pytest.raises(RecorderError, match="instruction"):
        recorder.add_frame(images, state, action, False, "  ", actual)
    assert recorder.end_episode(True) is None
    record(recorder, 0)
    with pytest.raises(RecorderError, match="new directory"):
        EpisodeRecorder(tmp_path, 30, FEATURES)
    with pytest.raises(RecorderError, match="new directory"):
        EpisodeRecorder(tmp_path, FPS, RecordingFeatures(views=(CameraView(FRONT, 96, 96),)))
    with pytest.raises(RecorderError, match="even"):
        CameraView("observation.images.odd", 95, 96)
    with pytest.raises(RecorderError, match="format"):
        EpisodeRecorder(tmp_path / "other", FPS, FEATURES, dataset_format="v1.6")  # type: ignore[arg-type]
