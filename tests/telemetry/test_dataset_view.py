"""``vla-edge dataset view``: a dataset written by the daemon's recorder, opened in Rerun (saved to .rrd, as on a
machine without a screen) and read back with the Rerun SDK: every frame's intervention flag is there."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from vla_edge.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("rerun") is None or importlib.util.find_spec("av") is None,
                                reason="needs the rerun and record extras")

DRIVEN = [(12, 20), (3, 7)]  # per episode: the frames [start, end) the operator drove


def record(root: Path) -> list[np.ndarray]:
    from vla_edge.recorder import EpisodeRecorder

    recorder = EpisodeRecorder(root, 10)
    rng = np.random.default_rng(0)
    flags = []
    for start, end in DRIVEN:
        episode_flags = np.zeros(20, dtype=bool)
        episode_flags[start:end] = True
        for i in range(20):
            image = np.full((96, 96, 3), 10 * i, np.uint8)
            recorder.add_frame(image, rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 4).astype(np.float32),
                               bool(episode_flags[i]), "put the red block in the left bin")
        recorder.end_episode(success=True)
        flags.append(episode_flags)
    return flags


def read(path: Path) -> tuple[dict[str, int], list[float], list[tuple[int, str]]]:
    from rerun.chunk import RrdReader

    rows: dict[str, int] = {}
    scalars: list[tuple[int, float]] = []
    changes: list[tuple[int, str]] = []
    for chunk in RrdReader(path).stream():
        if chunk.is_static:
            continue
        rows[chunk.entity_path] = rows.get(chunk.entity_path, 0) + chunk.num_rows
        batch = chunk.to_record_batch()
        if chunk.entity_path == "/intervention":
            frames = batch.column("frame_index").to_pylist()
            values = [v[0] for v in batch.column("Scalars:scalars").to_pylist()]
            scalars.extend(zip(frames, values))
        if chunk.entity_path == "/intervention/changes":
            changes.extend(zip(batch.column("frame_index").to_pylist(),
                               (t[0] for t in batch.column("TextLog:text").to_pylist())))
    return rows, [v for _, v in sorted(scalars)], sorted(changes)


def test_dataset_view_shows_the_intervention_flag_of_every_frame(tmp_path, capsys):
    root = tmp_path / "dataset"
    flags = record(root)
    assert main(["dataset", "view", str(root), "--save", str(tmp_path / "view.rrd")]) == 0
    out = capsys.readouterr().out
    assert "episode 0: 20 frames, 8 driven by the operator" in out
    assert "episode 1: 20 frames, 4 driven by the operator" in out
    for episode, (start, end) in enumerate(DRIVEN):
        rows, values, changes = read(tmp_path / f"view-episode-{episode}.rrd")
        assert values == flags[episode].astype(float).tolist()
        assert changes == [(0, "policy driving"), (start, "operator took over"), (end, "policy driving")][
            : 3 if end < 20 else 2]
        assert rows["/observation.state"] == rows["/action"] == 20  # LeRobot's features, through Rerun's reader
        if shutil.which("ffmpeg"):
            assert any(path.startswith("/observation.image") for path in rows), rows


def test_bad_input_gets_one_line_and_exit_2(tmp_path, capsys):
    assert main(["dataset", "view", str(tmp_path), "--save", str(tmp_path / "x.rrd")]) == 2
    assert "is not a LeRobot dataset" in capsys.readouterr().err
    assert main(["dataset", "view", str(tmp_path), "--save", str(tmp_path / "x.txt")]) == 2
    assert "--save needs a path ending in .rrd" in capsys.readouterr().err
