"""Episodes (policy and operator-driven frames alike) written as a LeRobot v2.1 dataset, to feed fine-tuning.

Layout under ``root`` (what ``LeRobotDataset`` v2.1 reads; LeRobot itself is not needed to write it)::

    meta/info.json                 codebase_version "v2.1", fps, features, totals, path templates
    meta/episodes.jsonl            {"episode_index", "tasks", "length", "success", "intervention_frames"}
    meta/tasks.jsonl               {"task_index", "task"}
    meta/episodes_stats.jsonl      {"episode_index", "stats": {feature: {min, max, mean, std, count}}}
    data/chunk-000/episode_000000.parquet
    videos/chunk-000/observation.image/episode_000000.mp4

Each frame carries ``intervention`` (True when the operator drove the arm). Crash safety: an episode's video is
encoded into a temp file while it is recorded and its parquet written to a temp file at the end; both are renamed
into place, and only then are the meta files replaced (each by rename). The dataset the meta files describe is
therefore always whole; a crash loses at most the episode in progress.

One recorder is used from one thread (the executor's). Needs the ``record`` extra (pyarrow, PyAV).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vla_edge.errors import VlaEdgeError

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
IMAGE_KEY = "observation.image"
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
_CODEC_NAMES = {"libx264": "h264", "libsvtav1": "av1"}


class RecorderError(VlaEdgeError):
    """The dataset cannot be written or appended to (incompatible existing dataset, bad frame)."""


@dataclass(frozen=True)
class RecordingFeatures:
    """What each frame holds: the image size and the names of the state and action dimensions."""

    image_height: int = 96
    image_width: int = 96
    state_names: tuple[str, ...] = ("gripper_x", "gripper_y", "grip")
    action_names: tuple[str, ...] = ("target_x", "target_y", "grip", "done")

    def info_features(self, fps: int, codec: str) -> dict[str, Any]:
        return {
            IMAGE_KEY: {
                "dtype": "video",
                "shape": [self.image_height, self.image_width, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": self.image_height,
                    "video.width": self.image_width,
                    "video.codec": _CODEC_NAMES.get(codec, codec),
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            },
            "observation.state": {"dtype": "float32", "shape": [len(self.state_names)], "names": list(self.state_names)},
            "action": {"dtype": "float32", "shape": [len(self.action_names)], "names": list(self.action_names)},
            "intervention": {"dtype": "bool", "shape": [1], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        }


@dataclass(frozen=True)
class EpisodeSummary:
    episode_index: int
    length: int
    intervention_frames: int
    tasks: tuple[str, ...]
    success: bool
    data_path: Path
    video_path: Path


@dataclass
class _Episode:
    index: int
    video_tmp: Path
    container: Any
    stream: Any
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    interventions: list[bool] = field(default_factory=list)
    task_indices: list[int] = field(default_factory=list)
    pixel_sum: np.ndarray = field(default_factory=lambda: np.zeros(3))
    pixel_sq_sum: np.ndarray = field(default_factory=lambda: np.zeros(3))
    pixel_min: np.ndarray = field(default_factory=lambda: np.full(3, 255.0))
    pixel_max: np.ndarray = field(default_factory=lambda: np.zeros(3))


class EpisodeRecorder:
    """Appends episodes to a LeRobot v2.1 dataset at ``root`` (created if missing)."""

    def __init__(
        self,
        root: Path,
        fps: int,
        features: RecordingFeatures | None = None,
        *,
        codec: str = "libx264",
        robot_type: str = "vla-edge",
    ) -> None:
        self.root = Path(root)
        self.fps = int(fps)
        self.features = features or RecordingFeatures()
        self.codec = codec
        self.robot_type = robot_type
        if self.features.image_height % 2 or self.features.image_width % 2:
            raise RecorderError("image height and width must be even (yuv420p video)")
        self._info_features = self.features.info_features(self.fps, codec)
        self._episodes: list[dict[str, Any]] = []
        self._tasks: dict[str, int] = {}
        self._stats_lines: list[dict[str, Any]] = []
        self._total_frames = 0
        self._episode: _Episode | None = None
        self._load_existing()

    # -- recording ----------------------------------------------------------------------------------------------

    @property
    def recording(self) -> bool:
        return self._episode is not None

    @property
    def total_episodes(self) -> int:
        return len(self._episodes)

    def add_frame(
        self, image: np.ndarray, state: np.ndarray, action: np.ndarray, intervention: bool, instruction: str
    ) -> None:
        """One control tick: what the camera saw, the measured state, the action actually sent, who drove."""
        image = np.asarray(image)
        expected = (self.features.image_height, self.features.image_width, 3)
        if image.shape != expected or image.dtype != np.uint8:
            raise RecorderError(f"frame must be uint8 {expected}, got {image.dtype} {image.shape}")
        state = self._vector(state, len(self.features.state_names), "state")
        action = self._vector(action, len(self.features.action_names), "action")
        if not instruction.strip():
            raise RecorderError("each frame needs the instruction it was recorded under")
        episode = self._episode or self._start_episode()
        self._encode(episode, image)
        episode.states.append(state)
        episode.actions.append(action)
        episode.interventions.append(bool(intervention))
        episode.task_indices.append(self._task_index(instruction))
        pixels = image.reshape(-1, 3).astype(np.float64)
        episode.pixel_sum += pixels.mean(axis=0)
        episode.pixel_sq_sum += (pixels**2).mean(axis=0)
        episode.pixel_min = np.minimum(episode.pixel_min, pixels.min(axis=0))
        episode.pixel_max = np.maximum(episode.pixel_max, pixels.max(axis=0))

    def end_episode(self, success: bool) -> EpisodeSummary | None:
        """Finish the episode in progress and make it part of the dataset; None when no frame was recorded."""
        episode = self._episode
        if episode is None:
            return None
        self._episode = None
        try:
            return self._commit(episode, success)
        except BaseException:
            episode.video_tmp.unlink(missing_ok=True)
            raise

    def discard_episode(self) -> None:
        """Drop the episode in progress (nothing of it reaches the dataset)."""
        episode, self._episode = self._episode, None
        if episode is not None:
            episode.container.close()
            episode.video_tmp.unlink(missing_ok=True)

    # -- internals ------------------------------------------------------------------------------------------------

    def _start_episode(self) -> _Episode:
        import av  # the record extra; imported here so the daemon runs without it when recording is off

        index = len(self._episodes)
        video_path = self.root / VIDEO_PATH.format(
            episode_chunk=index // CHUNKS_SIZE, video_key=IMAGE_KEY, episode_index=index
        )
        video_path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{video_path.stem}-", suffix=".mp4.tmp", dir=video_path.parent)
        os.close(fd)
        container = av.open(name, mode="w", format="mp4")
        options = {"g": "2"} if self.codec == "libx264" else {}
        # A keyframe every 2 frames (LeRobot's choice too): training samples frames at random and must seek fast.
        stream = container.add_stream(self.codec, rate=self.fps, options=options)
        stream.width = self.features.image_width
        stream.height = self.features.image_height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, self.fps)
        self._episode = _Episode(index=index, video_tmp=Path(name), container=container, stream=stream)
        return self._episode

    def _encode(self, episode: _Episode, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = len(episode.states)
        for packet in episode.stream.encode(frame):
            episode.container.mux(packet)

    def _commit(self, episode: _Episode, success: bool) -> EpisodeSummary:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for packet in episode.stream.encode(None):
            episode.container.mux(packet)
        episode.container.close()
        n = len(episode.states)
        index = episode.index
        chunk = index // CHUNKS_SIZE
        first = self._total_frames
        states = np.stack(episode.states)
        actions = np.stack(episode.actions)
        table = pa.table(
            {
                "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(states.ravel(), pa.float32()), states.shape[1]),
                "action": pa.FixedSizeListArray.from_arrays(pa.array(actions.ravel(), pa.float32()), actions.shape[1]),
                "intervention": pa.array(episode.interventions, pa.bool_()),
                "timestamp": pa.array(np.arange(n, dtype=np.float32) / np.float32(self.fps), pa.float32()),
                "frame_index": pa.array(np.arange(n), pa.int64()),
                "episode_index": pa.array(np.full(n, index), pa.int64()),
                "index": pa.array(np.arange(first, first + n), pa.int64()),
                "task_index": pa.array(episode.task_indices, pa.int64()),
            }
        )
        data_path = self.root / DATA_PATH.format(episode_chunk=chunk, episode_index=index)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        fd, data_tmp = tempfile.mkstemp(prefix=f".{data_path.stem}-", suffix=".parquet.tmp", dir=data_path.parent)
        os.close(fd)
        try:
            pq.write_table(table, data_tmp)
            _fsync_file(Path(data_tmp))
            _fsync_file(episode.video_tmp)
            video_path = self.root / VIDEO_PATH.format(episode_chunk=chunk, video_key=IMAGE_KEY, episode_index=index)
            os.replace(episode.video_tmp, video_path)
            os.replace(data_tmp, data_path)
        finally:
            Path(data_tmp).unlink(missing_ok=True)

        tasks = [t for t, i in sorted(self._tasks.items(), key=lambda kv: kv[1]) if i in set(episode.task_indices)]
        interventions = int(sum(episode.interventions))
        self._episodes.append(
            {
                "episode_index": index,
                "tasks": tasks,
                "length": n,
                "success": bool(success),
                "intervention_frames": interventions,
            }
        )
        self._stats_lines.append({"episode_index": index, "stats": self._episode_stats(episode, table)})
        self._total_frames += n
        self._write_meta()
        return EpisodeSummary(index, n, interventions, tuple(tasks), bool(success), data_path, video_path)

    def _episode_stats(self, episode: _Episode, table: Any) -> dict[str, Any]:
        n = len(episode.states)
        stats: dict[str, Any] = {}
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if name in ("observation.state", "action"):
                values = np.asarray(column.flatten(), dtype=np.float64).reshape(n, -1)
            else:
                values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(n, 1)
            stats[name] = {
                "min": values.min(axis=0).tolist(),
                "max": values.max(axis=0).tolist(),
                "mean": values.mean(axis=0).tolist(),
                "std": values.std(axis=0).tolist(),
                "count": [n],
            }
        # Image statistics per channel in [0, 1], shaped (3, 1, 1) as LeRobot's normalisation expects.
        mean = episode.pixel_sum / n
        std = np.sqrt(np.maximum(episode.pixel_sq_sum / n - mean**2, 0.0))
        shape = lambda v: [[[float(x) / 255.0]] for x in v]  # noqa: E731 - four uses, one line each
        stats[IMAGE_KEY] = {
            "min": shape(episode.pixel_min),
            "max": shape(episode.pixel_max),
            "mean": shape(mean),
            "std": shape(std),
            "count": [n],
        }
        return stats

    def _write_meta(self) -> None:
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        episodes = len(self._episodes)
        _write_atomic(meta / "tasks.jsonl", _jsonl({"task_index": i, "task": t} for t, i in sorted(self._tasks.items(), key=lambda kv: kv[1])))
        _write_atomic(meta / "episodes.jsonl", _jsonl(self._episodes))
        _write_atomic(meta / "episodes_stats.jsonl", _jsonl(self._stats_lines))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": episodes,
            "total_frames": self._total_frames,
            "total_tasks": len(self._tasks),
            "total_videos": episodes,
            "total_chunks": (episodes - 1) // CHUNKS_SIZE + 1 if episodes else 0,
            "chunks_size": CHUNKS_SIZE,
            "fps": self.fps,
            "splits": {"train": f"0:{episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": self._info_features,
        }
        # info.json last: it is what says how many episodes the dataset has.
        _write_atomic(meta / "info.json", json.dumps(info, indent=4).encode("utf-8"))

    def _load_existing(self) -> None:
        # One writer per dataset: temp files still here are what a crashed writer left; nothing refers to them.
        for stale in (*self.root.glob("data/*/.*.tmp"), *self.root.glob("videos/*/*/.*.tmp"), *self.root.glob("meta/.*.tmp")):
            stale.unlink(missing_ok=True)
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            return
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            episodes = _read_jsonl(self.root / "meta" / "episodes.jsonl")
            tasks = _read_jsonl(self.root / "meta" / "tasks.jsonl")
            stats = _read_jsonl(self.root / "meta" / "episodes_stats.jsonl")
        except (OSError, json.JSONDecodeError) as exc:
            raise RecorderError(f"cannot read the existing dataset at {self.root}: {exc}") from None
        if info.get("codebase_version") != CODEBASE_VERSION:
            raise RecorderError(
                f"{self.root} holds a LeRobot {info.get('codebase_version')} dataset; this recorder appends to "
                f"{CODEBASE_VERSION} only. Record into a new directory."
            )
        if info.get("fps") != self.fps or info.get("features") != self._info_features:
            raise RecorderError(
                f"{self.root} was recorded with other fps or features (fps {info.get('fps')}); "
                "record into a new directory (recorder.dataset_dir)"
            )
        total = int(info.get("total_episodes", 0))
        # Lines past info.json's totals belong to an episode whose commit did not finish: not part of the dataset.
        self._episodes = sorted(episodes, key=lambda e: e["episode_index"])[:total]
        self._stats_lines = sorted(stats, key=lambda e: e["episode_index"])[:total]
        self._tasks = {t["task"]: int(t["task_index"]) for t in tasks}
        self._total_frames = sum(int(e["length"]) for e in self._episodes)

    def _task_index(self, instruction: str) -> int:
        if instruction not in self._tasks:
            self._tasks[instruction] = len(self._tasks)
        return self._tasks[instruction]

    @staticmethod
    def _vector(value: np.ndarray, size: int, what: str) -> np.ndarray:
        array = np.asarray(value, dtype=np.float32).reshape(-1)
        if array.shape != (size,) or not np.all(np.isfinite(array)):
            raise RecorderError(f"{what} must be {size} finite numbers, got {np.asarray(value).tolist()!r}")
        return array


def _jsonl(items: Any) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in items).encode("utf-8")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _write_atomic(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
