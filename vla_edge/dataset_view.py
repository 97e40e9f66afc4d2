"""A recorded LeRobot dataset in Rerun, with the ``intervention`` flag that LeRobot's own viewer does not show.

Rerun's LeRobot reader (``rerun.experimental.LeRobotReader``: v2.1 and v3.0 layouts) brings the video, state,
action and task of each episode; this adds what it skips (it does not load bool features): ``intervention``
per frame, as a 0/1 series and as a text line where a human took over or gave back, and the episode's success.
Each episode is one Rerun recording on the ``frame_index`` timeline.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vla_edge.errors import VlaEdgeError
from vla_edge.rerun_log import import_rerun

log = logging.getLogger(__name__)

INTERVENTION = "intervention"
APPLICATION_ID = "vla-edge-dataset"


class DatasetViewError(VlaEdgeError):
    """The directory is not a LeRobot dataset this viewer can read."""


def interventions(root: Path, episode: int) -> np.ndarray:
    """The ``intervention`` column of one episode, in frame order (empty if the dataset has none)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    flags: list[tuple[int, bool]] = []
    for path in sorted((root / "data").rglob("*.parquet")):
        names = pq.read_schema(path).names
        if INTERVENTION not in names or "episode_index" not in names:
            continue
        table = pq.read_table(path, columns=["episode_index", "frame_index", INTERVENTION])
        table = table.filter(pc.equal(table["episode_index"], episode))
        flags.extend(zip(table["frame_index"].to_pylist(), (bool(v) for v in table[INTERVENTION].to_pylist())))
    flags.sort()
    return np.array([f for _, f in flags], dtype=bool)


def episode_success(root: Path, episode: int) -> bool | None:
    """The recorder's ``success`` for an episode: v3.0 keeps it in meta/episodes/*.parquet, v2.1 in episodes.jsonl."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for table_path in sorted((root / "meta" / "episodes").glob("*/*.parquet")):
        if "success" not in pq.read_schema(table_path).names:
            return None
        table = pq.read_table(table_path, columns=["episode_index", "success"])
        rows = table.filter(pc.equal(table["episode_index"], episode))["success"].to_pylist()
        if rows:
            return bool(rows[0])
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("episode_index") == episode and "success" in entry:
            return bool(entry["success"])
    return None


def intervention_spans(flags: np.ndarray) -> Iterator[tuple[int, bool]]:
    """(frame, now_intervening) at every change of the flag, starting with frame 0."""
    previous = None
    for frame, flag in enumerate(flags.tolist()):
        if flag != previous:
            yield frame, flag
            previous = flag


def log_episode(rr: Any, recording: Any, reader: Any, root: Path, episode: int, video: bool) -> dict[str, int]:
    """Send one episode to ``recording``: LeRobot's features, then the intervention flag. Returns counts."""
    mode = "native" if video else "skip"
    rr.send_chunks(reader.stream(episode, timeline="frame_index", video_mode=mode), recording=recording)
    flags = interventions(root, episode)
    if flags.size:
        frames = np.arange(flags.size)
        recording.send_columns(INTERVENTION, indexes=[rr.TimeColumn("frame_index", sequence=frames)],
                               columns=rr.Scalars.columns(scalars=flags.astype(np.float64)))
        recording.log(INTERVENTION, rr.SeriesLines(names=["operator driving"], colors=[(230, 120, 0)]), static=True)
        for frame, on in intervention_spans(flags):
            recording.set_time("frame_index", sequence=frame)
            recording.log("intervention/changes", rr.TextLog(
                "operator took over" if on else "policy driving", level="WARN" if on else "INFO"))
    success = episode_success(root, episode)
    if success is not None:
        recording.log("episode/success", rr.TextDocument(f"episode {episode}: "
                                                          f"{'success' if success else 'failure'}"), static=True)
    return {"frames": int(flags.size), "intervention_frames": int(flags.sum())}


def view(root: Path, episodes: list[int] | None, save: Path | None, connect: str | None) -> list[dict[str, Any]]:
    """Open the dataset's episodes in a viewer (``connect``) or write them to ``save`` (.rrd)."""
    # Rerun's reader warns that it skips the bool ``intervention`` feature: this module adds it, so say nothing.
    os.environ.setdefault("RUST_LOG", "warn,re_lerobot=error")
    rr = import_rerun()
    from rerun.experimental import LeRobotReader

    if not (root / "meta" / "info.json").is_file():
        raise DatasetViewError(f"{root} is not a LeRobot dataset (no meta/info.json)")
    try:
        reader = LeRobotReader(root)
    except (ValueError, OSError) as exc:
        raise DatasetViewError(f"cannot read {root} as a LeRobot dataset: {exc}") from None
    available = reader.episodes()
    chosen = available if episodes is None else episodes
    missing = sorted(set(chosen) - set(available))
    if missing:
        raise DatasetViewError(f"{root} has no episode {missing[0]} (episodes: {available[0]}–{available[-1]})")
    video = shutil.which("ffmpeg") is not None  # Rerun transcodes the dataset's mp4 through ffmpeg
    if not video:
        log.warning("ffmpeg is not installed: the episodes are shown without their video")
    results = []
    for episode in chosen:
        recording = rr.RecordingStream(APPLICATION_ID, recording_id=f"{root.name}-episode-{episode}")
        if save is not None:
            target = save if len(chosen) == 1 else save.with_name(f"{save.stem}-episode-{episode}{save.suffix}")
            recording.save(str(target))
        else:
            recording.connect_grpc(connect)
        counts = log_episode(rr, recording, reader, root, episode, video)
        recording.flush()
        recording.disconnect()
        results.append({"episode": episode, **counts, "video": video,
                        "target": str(target) if save is not None else connect})
    return results
