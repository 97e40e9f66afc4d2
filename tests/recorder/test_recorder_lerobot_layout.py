"""Episodes written in the LeRobot v2.1 layout: read back with pyarrow and PyAV, checked against the spec."""

from __future__ import annotations

import json

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from vla_edge.recorder import EpisodeRecorder, RecorderError, RecordingFeatures

FPS = 10


def frame(i: int) -> np.ndarray:
    image = np.zeros((96, 96, 3), dtype=np.uint8)
    image[:, : 8 + 4 * (i % 20)] = (200, 40, 40)  # a bar that grows, so frames differ
    return image


def record(recorder: EpisodeRecorder, n: int, intervene: range, instruction: str, success: bool):
    for i in range(n):
        state = np.array([i / n, 0.5, float(i in intervene)], dtype=np.float32)
        action = np.array([i / n, 0.5, 1.0, 0.0], dtype=np.float32)
        recorder.add_frame(frame(i), state, action, i in intervene, instruction)
    return recorder.end_episode(success)


def test_two_episodes_then_append_a_third(tmp_path):
    root = tmp_path / "ds"
    recorder = EpisodeRecorder(root, FPS)
    first = record(recorder, 12, range(0), "put the red block in the left bin", True)
    second = record(recorder, 7, range(3, 6), "put the blue block in the top bin", False)
    assert (first.length, first.intervention_frames) == (12, 0)
    assert (second.episode_index, second.intervention_frames) == (1, 3)

    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["fps"] == FPS
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"], info["total_videos"]) == (2, 19, 2, 2)
    assert info["splits"] == {"train": "0:2"} and info["chunks_size"] == 1000 and info["total_chunks"] == 1
    features = info["features"]
    assert features["observation.image"]["dtype"] == "video" and features["observation.image"]["shape"] == [96, 96, 3]
    assert features["observation.image"]["info"]["video.fps"] == FPS
    assert features["intervention"] == {"dtype": "bool", "shape": [1], "names": None}
    assert features["action"]["names"] == ["target_x", "target_y", "grip", "done"]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in features

    table = pq.read_table(root / info["data_path"].format(episode_chunk=0, episode_index=1))
    assert set(table.column_names) == {k for k, f in features.items() if f["dtype"] != "video"}
    rows = table.to_pylist()
    assert len(rows) == 7
    assert [r["intervention"] for r in rows] == [False, False, False, True, True, True, False]
    assert [r["index"] for r in rows] == list(range(12, 19)), "index continues across episodes"
    assert [r["frame_index"] for r in rows] == list(range(7))
    assert rows[3]["timestamp"] == pytest.approx(0.3)
    assert {r["episode_index"] for r in rows} == {1} and {r["task_index"] for r in rows} == {1}
    assert rows[2]["observation.state"] == pytest.approx([2 / 7, 0.5, 0.0])
    assert len(rows[0]["action"]) == 4

    video = root / info["video_path"].format(episode_chunk=0, video_key="observation.image", episode_index=1)
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 7 and frames[0].shape == (96, 96, 3)
    # Lossy, but the content must be the recorded frames in order (the red bar grows by 4 px per frame).
    widths = [int((f[48, :, 0] > 120).sum()) for f in frames]
    assert widths == pytest.approx([8 + 4 * i for i in range(7)], abs=2)

    episodes = [json.loads(l) for l in (root / "meta/episodes.jsonl").read_text().splitlines()]
    assert episodes[1] == {"episode_index": 1, "tasks": ["put the blue block in the top bin"], "length": 7, "success": False, "intervention_frames": 3}
    tasks = [json.loads(l) for l in (root / "meta/tasks.jsonl").read_text().splitlines()]
    assert tasks == [{"task_index": 0, "task": "put the red block in the left bin"}, {"task_index": 1, "task": "put the blue block in the top bin"}]
    stats = [json.loads(l) for l in (root / "meta/episodes_stats.jsonl").read_text().splitlines()]
    assert stats[1]["stats"]["intervention"]["mean"] == pytest.approx([3 / 7])
    assert np.array(stats[0]["stats"]["observation.image"]["mean"]).shape == (3, 1, 1)

    # A new recorder (after a restart) appends, reusing known tasks.
    again = EpisodeRecorder(root, FPS)
    third = record(again, 5, range(5), "put the red block in the left bin", True)
    assert third.episode_index == 2
    info = json.loads((root / "meta/info.json").read_text())
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 24, 2)
    assert pq.read_table(third.data_path).column("index").to_pylist() == list(range(19, 24))
    assert not list(root.rglob("*.tmp")), "no temp file may be left behind"


def test_crash_mid_episode_leaves_dataset_whole(tmp_path):
    root = tmp_path / "ds"
    recorder = EpisodeRecorder(root, FPS)
    record(recorder, 4, range(0), "a", True)
    for i in range(3):  # an episode in progress when the process dies: never ended
        recorder.add_frame(frame(i), np.zeros(3), np.zeros(4), True, "b")
    before = (root / "meta/info.json").read_text()
    # The process dies here. A new recorder sees one whole episode and continues at index 1.
    fresh = EpisodeRecorder(root, FPS)
    assert fresh.total_episodes == 1 and (root / "meta/info.json").read_text() == before
    assert not (root / "data/chunk-000/episode_000001.parquet").exists()
    assert not list(root.rglob("*.tmp")), "the dead writer's temp video is cleaned up"
    summary = record(fresh, 2, range(0), "c", True)
    assert summary.episode_index == 1


def test_bad_frames_and_incompatible_dataset_are_refused(tmp_path):
    recorder = EpisodeRecorder(tmp_path, FPS)
    with pytest.raises(RecorderError, match="uint8"):
        recorder.add_frame(np.zeros((64, 64, 3), np.uint8), np.zeros(3), np.zeros(4), False, "x")
    with pytest.raises(RecorderError, match="finite"):
        recorder.add_frame(frame(0), np.array([0, np.nan, 0]), np.zeros(4), False, "x")
    with pytest.raises(RecorderError, match="action"):
        recorder.add_frame(frame(0), np.zeros(3), np.zeros(3), False, "x")
    assert recorder.end_episode(True) is None
    record(recorder, 2, range(0), "x", True)
    with pytest.raises(RecorderError, match="new directory"):
        EpisodeRecorder(tmp_path, 30)
    with pytest.raises(RecorderError, match="new directory"):
        EpisodeRecorder(tmp_path, FPS, RecordingFeatures(state_names=("a", "b")))
