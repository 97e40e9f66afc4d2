"""LeRobot dataset format v2.1, for readers older than LeRobot 0.4 (``recorder.dataset_format = "v2.1"``).

Layout under the dataset root (one file per episode, so appending never rewrites anything)::

    meta/info.json                 codebase_version "v2.1", fps, features, totals, path templates
    meta/episodes.jsonl            {"episode_index", "tasks", "length", "success", "intervention_frames"}
    meta/tasks.jsonl               {"task_index", "task"}
    meta/episodes_stats.jsonl      {"episode_index", "stats": {feature: {min, max, mean, std, count}}}
    data/chunk-000/episode_000000.parquet
    videos/chunk-000/<view>/episode_000000.mp4

Crash safety: the episode's parquet and videos are installed by atomic renames, then the meta files, each by
rename, ``info.json`` last (the commit point: lines past its ``total_episodes`` are ignored on the next open).
LeRobot 0.4's own converter (``lerobot.datasets.v30.convert_dataset_v21_to_v30``) turns this into v3.0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vla_edge.recorder import files
from vla_edge.recorder.episodes import EpisodeSummary, FinishedEpisode
from vla_edge.recorder.features import RecorderError

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
_V21_STATS = ("min", "max", "mean", "std", "count")


class V21Layout:
    def __init__(self, root: Path, fps: int, features: dict[str, Any], robot_type: str, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        self.fps = fps
        self.features = features
        self.video_keys = [k for k, f in features.items() if f["dtype"] == "video"]
        self.robot_type = robot_type
        self.tasks: list[str] = []
        self._episodes: list[dict[str, Any]] = []
        self._stats_lines: list[dict[str, Any]] = []
        self.total_frames = 0
        if (root / "meta/info.json").exists():
            self._load()

    @property
    def total_episodes(self) -> int:
        return len(self._episodes)

    def commit(self, episode: FinishedEpisode) -> EpisodeSummary:
        root, index = self.root, episode.index
        chunk = index // CHUNKS_SIZE
        data_path = root / DATA_PATH.format(episode_chunk=chunk, episode_index=index)
        files.write_parquet(root, data_path, episode.table, self.durable)
        video_paths = {}
        for key in self.video_keys:
            path = root / VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=index)
            files.install(episode.videos[key], path, self.durable)
            video_paths[key] = path
        self._episodes.append({"episode_index": index, "tasks": list(episode.tasks), "length": episode.length,
                               "success": episode.success, "intervention_frames": episode.intervention_frames})
        self._stats_lines.append({"episode_index": index, "stats": {
            feature: {k: v for k, v in per.items() if k in _V21_STATS} for feature, per in episode.stats.items()}})
        self.total_frames += episode.length
        meta = root / "meta"
        tasks = _jsonl({"task_index": i, "task": t} for i, t in enumerate(self.tasks))
        files.write_bytes(root, meta / "tasks.jsonl", tasks, self.durable)
        files.write_bytes(root, meta / "episodes.jsonl", _jsonl(self._episodes), self.durable)
        files.write_bytes(root, meta / "episodes_stats.jsonl", _jsonl(self._stats_lines), self.durable)
        episodes = len(self._episodes)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": episodes,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "total_videos": episodes * len(self.video_keys),
            "total_chunks": (episodes - 1) // CHUNKS_SIZE + 1,
            "chunks_size": CHUNKS_SIZE,
            "fps": self.fps,
            "splits": {"train": f"0:{episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": self.features,
        }
        files.write_json(root, meta / "info.json", info, self.durable)  # last: it says how many episodes the dataset has
        for directory in {data_path.parent, meta, *(p.parent for p in video_paths.values())}:
            if self.durable:
                files.fsync_dir(directory)
        return EpisodeSummary(index, episode.length, episode.intervention_frames, episode.tasks, episode.success,
                              data_path, video_paths)

    def _load(self) -> None:
        root = self.root
        try:
            info = json.loads((root / "meta/info.json").read_text(encoding="utf-8"))
            episodes = _read_jsonl(root / "meta/episodes.jsonl")
            tasks = _read_jsonl(root / "meta/tasks.jsonl")
            stats = _read_jsonl(root / "meta/episodes_stats.jsonl")
        except (OSError, json.JSONDecodeError) as exc:
            raise RecorderError(f"cannot read the existing dataset at {root}: {exc}") from None
        version = info.get("codebase_version")
        if version != CODEBASE_VERSION:
            raise RecorderError(f"{root} holds a LeRobot {version} dataset; this recorder appends to {CODEBASE_VERSION} "
                                "only (recorder.dataset_format). Record into a new directory.")
        if info.get("fps") != self.fps or info.get("features") != self.features:
            raise RecorderError(f"{root} was recorded with other fps or features (fps {info.get('fps')}); "
                                "record into a new directory (recorder.dataset_dir)")
        total = int(info.get("total_episodes", 0))
        # Lines past info.json's totals belong to an episode whose commit did not finish: not part of the dataset.
        self._episodes = sorted(episodes, key=lambda e: e["episode_index"])[:total]
        self._stats_lines = sorted(stats, key=lambda e: e["episode_index"])[:total]
        self.tasks = [t["task"] for t in sorted(tasks, key=lambda t: t["task_index"])][: int(info.get("total_tasks", 0))]
        self.total_frames = sum(int(e["length"]) for e in self._episodes)
        # Files an unfinished commit installed for the next index are overwritten when that index is recorded.


def _jsonl(items: Any) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in items).encode("utf-8")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
