"""LeRobot dataset format v3.0 (what LeRobot 0.4 and later read), written without LeRobot.

Layout under the dataset root (LeRobot's ``lerobot/datasets/utils.py`` paths)::

    meta/info.json                          codebase_version "v3.0", fps, features, totals, path templates
    meta/tasks.parquet                      task_index, indexed by the task text (a pandas index)
    meta/stats.json                         statistics of every feature over the whole dataset
    meta/episodes/chunk-000/file-000.parquet  one row per episode: tasks, length, where its rows and video
                                            frames are (data/…, dataset_from/to_index, videos/<view>/…,
                                            from/to_timestamp), its statistics (stats/<feature>/<stat>),
                                            success and intervention_frames (ours; readers ignore extra columns)
    data/chunk-000/file-000.parquet         the frames of many episodes, one after another
    videos/<view>/chunk-000/file-000.mp4    the frames of many episodes, one after another

Appending an episode (each file replaced by an atomic rename of a staged, fsynced copy), in this order:

1. the current data file with the episode's rows added (a new file once it would pass ``data_file_mb``);
2. per view, the current video file with the episode's packets copied after its last frame (no re-encoding);
3. ``tasks.parquet`` if the episode brought a new task; 4. the episode row into the current episodes file;
5. ``stats.json``; 6. ``info.json`` — **the commit point**: its ``total_episodes`` and ``total_frames`` say which
   episodes and rows the dataset has.

A crash before step 6 leaves the dataset as it was plus, at most, rows, frames and an episode row past what
``info.json`` counts: LeRobot's reader only reaches frames below ``total_frames`` and episodes below
``total_episodes``, so it reads the old dataset whole (tested). The next recorder to open the dataset cuts those
leftovers off (`recover`) before it appends. A crash therefore loses at most the episode being written.
The price of shared files: each append rewrites the current data and video files, so its cost grows with their
size until they roll over (``data_file_mb``, ``video_file_mb``; measured in docs/lerobot.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vla_edge.recorder import files, stats, video
from vla_edge.recorder.episodes import EpisodeSummary, FinishedEpisode
from vla_edge.recorder.features import RecorderError

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
INFO = "meta/info.json"
STATS = "meta/stats.json"
TASKS = "meta/tasks.parquet"


def _next(position: tuple[int, int]) -> tuple[int, int]:
    chunk, file = position
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


class V30Layout:
    """The v3.0 files of one dataset: loads (and repairs) an existing one, appends episodes crash-safely."""

    def __init__(self, root: Path, fps: int, features: dict[str, Any], robot_type: str,
                 data_file_mb: float, video_file_mb: float, durable: bool = True) -> None:
        self.root = root
        self.durable = durable
        self.fps = fps
        self.features = features
        self.video_keys = [k for k, f in features.items() if f["dtype"] == "video"]
        self.robot_type = robot_type
        self.data_file_mb = float(data_file_mb)
        self.video_file_mb = float(video_file_mb)
        self.tasks: list[str] = []
        self.episodes: list[dict[str, Any]] = []
        self.total_frames = 0
        self.dataset_stats: dict[str, stats.Stats] | None = None
        if (root / INFO).exists():
            self._load()

    @property
    def total_episodes(self) -> int:
        return len(self.episodes)

    # -- appending ---------------------------------------------------------------------------------------------

    def commit(self, episode: FinishedEpisode) -> EpisodeSummary:
        root = self.root
        last = self.episodes[-1] if self.episodes else None
        first_frame = self.total_frames
        row: dict[str, Any] = {"episode_index": episode.index, "tasks": list(episode.tasks), "length": episode.length}

        # 1. data rows
        data_pos, rows_before = self._data_position(last, episode)
        data_path = root / DATA_PATH.format(chunk_index=data_pos[0], file_index=data_pos[1])
        table = episode.table
        if rows_before:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.concat_tables([pq.read_table(data_path).slice(0, rows_before), table])
        files.write_parquet(root, data_path, table, self.durable)
        row.update({"data/chunk_index": data_pos[0], "data/file_index": data_pos[1],
                    "dataset_from_index": first_frame, "dataset_to_index": first_frame + episode.length})

        # 2. video frames, per view
        video_paths: dict[str, Path] = {}
        for key in self.video_keys:
            staged = episode.videos[key]
            pos, frames_before = self._video_position(last, key, staged)
            path = root / VIDEO_PATH.format(video_key=key, chunk_index=pos[0], file_index=pos[1])
            if frames_before:
                joined = files.staging_file(root, ".mp4")
                try:
                    video.append(path, frames_before, staged, self.fps, joined)
                    files.install(joined, path, self.durable)
                finally:
                    joined.unlink(missing_ok=True)
                staged.unlink(missing_ok=True)
            else:
                files.install(staged, path, self.durable)
            start = frames_before / self.fps
            row.update({f"videos/{key}/chunk_index": pos[0], f"videos/{key}/file_index": pos[1],
                        f"videos/{key}/from_timestamp": start,
                        f"videos/{key}/to_timestamp": start + episode.length / self.fps})
            video_paths[key] = path

        # 3. tasks, 4. the episode row, 5. statistics
        if len(self.tasks) > self._tasks_on_disk():
            self._write_tasks(self.tasks)
        row["success"] = episode.success
        row["intervention_frames"] = episode.intervention_frames
        row.update(stats.flatten(episode.stats))
        meta_pos = self._episodes_position(last)
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = meta_pos
        self._write_episode_rows(meta_pos, [*self.episodes, row])
        dataset_stats = (episode.stats if self.dataset_stats is None
                         else stats.aggregate([self.dataset_stats, episode.stats]))
        files.write_json(root, root / STATS, dataset_stats, self.durable)

        # 6. the commit point
        self.episodes.append(row)
        self.total_frames += episode.length
        self.dataset_stats = dataset_stats
        self._write_info()
        for directory in {data_path.parent, root / "meta", *(p.parent for p in video_paths.values())}:
            if self.durable:
                files.fsync_dir(directory)
        return EpisodeSummary(episode.index, episode.length, episode.intervention_frames, episode.tasks,
                              episode.success, data_path, video_paths)

    def _data_position(self, last: dict[str, Any] | None, episode: FinishedEpisode) -> tuple[tuple[int, int], int]:
        """Where the episode's rows go, and how many rows of earlier episodes that file keeps before them."""
        if last is None:
            return (0, 0), 0
        pos = (int(last["data/chunk_index"]), int(last["data/file_index"]))
        rows = self._rows_in(pos, "data")
        path = self.root / DATA_PATH.format(chunk_index=pos[0], file_index=pos[1])
        size_mb = path.stat().st_size / 2**20
        if size_mb * (1 + episode.length / max(rows, 1)) >= self.data_file_mb:
            return _next(pos), 0
        return pos, rows

    def _video_position(self, last: dict[str, Any] | None, key: str, staged: Path) -> tuple[tuple[int, int], int]:
        if last is None:
            return (0, 0), 0
        pos = (int(last[f"videos/{key}/chunk_index"]), int(last[f"videos/{key}/file_index"]))
        path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=pos[0], file_index=pos[1])
        size_mb = (path.stat().st_size + staged.stat().st_size) / 2**20
        if size_mb >= self.video_file_mb or not video.can_append(path, staged):
            return _next(pos), 0
        return pos, self._frames_in(pos, key)

    def _episodes_position(self, last: dict[str, Any] | None) -> tuple[int, int]:
        if last is None:
            return (0, 0)
        pos = (int(last["meta/episodes/chunk_index"]), int(last["meta/episodes/file_index"]))
        path = self.root / EPISODES_PATH.format(chunk_index=pos[0], file_index=pos[1])
        if path.stat().st_size / 2**20 >= self.data_file_mb:
            return _next(pos)
        return pos

    def _rows_in(self, pos: tuple[int, int], kind: str) -> int:
        return sum(int(e["length"]) for e in self.episodes
                   if (int(e[f"{kind}/chunk_index"]), int(e[f"{kind}/file_index"])) == pos)

    def _frames_in(self, pos: tuple[int, int], key: str) -> int:
        return self._rows_in(pos, f"videos/{key}")

    def _write_episode_rows(self, pos: tuple[int, int], rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        in_file = [r for r in rows if (int(r["meta/episodes/chunk_index"]), int(r["meta/episodes/file_index"])) == pos]
        path = self.root / EPISODES_PATH.format(chunk_index=pos[0], file_index=pos[1])
        files.write_parquet(self.root, path, pa.Table.from_pylist(in_file), self.durable)

    def _write_tasks(self, tasks: list[str]) -> None:
        import pyarrow as pa

        # What pandas writes for DataFrame({"task_index": ...}, index=tasks): LeRobot reads it with pandas.
        pandas_meta = {
            "index_columns": ["__index_level_0__"],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                                "metadata": {"encoding": "UTF-8"}}],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                 "metadata": None},
                {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
                 "metadata": None},
            ],
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.0",
        }
        table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                          "__index_level_0__": pa.array(tasks, pa.string())})
        table = table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
        files.write_parquet(self.root, self.root / TASKS, table, self.durable)
        self._tasks_written = len(tasks)

    def _tasks_on_disk(self) -> int:
        return getattr(self, "_tasks_written", 0)

    def _write_info(self) -> None:
        episodes = len(self.episodes)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": episodes,
            "total_frames": self.total_frames,
            "total_tasks": self._tasks_on_disk(),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": self.data_file_mb,
            "video_files_size_in_mb": self.video_file_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": self.features,
        }
        files.write_json(self.root, self.root / INFO, info, self.durable)

    # -- opening an existing dataset ---------------------------------------------------------------------------

    def _load(self) -> None:
        import pyarrow.parquet as pq

        root = self.root
        try:
            info = json.loads((root / INFO).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RecorderError(f"cannot read {root / INFO}: {exc}") from None
        version = info.get("codebase_version")
        if version != CODEBASE_VERSION:
            raise RecorderError(f"{root} holds a LeRobot {version} dataset; this recorder appends to {CODEBASE_VERSION} "
                                "only (recorder.dataset_format). Record into a new directory.")
        if info.get("fps") != self.fps or info.get("features") != self.features:
            raise RecorderError(f"{root} was recorded with other fps or features (fps {info.get('fps')}); "
                                "record into a new directory (recorder.dataset_dir)")
        total_episodes, total_frames = int(info["total_episodes"]), int(info["total_frames"])
        total_tasks = int(info["total_tasks"])
        try:
            rows = [r for path in sorted((root / "meta/episodes").glob("*/*.parquet"))
                    for r in pq.read_table(path).to_pylist()]
            tasks = pq.read_table(root / TASKS).column("__index_level_0__").to_pylist() if total_tasks else []
        except (OSError, KeyError, ValueError) as exc:
            raise RecorderError(f"cannot read the episodes or tasks of {root}: {exc}") from None
        rows.sort(key=lambda r: int(r["episode_index"]))
        if len(rows) < total_episodes or len(tasks) < total_tasks:
            raise RecorderError(f"{root}: meta/info.json counts {total_episodes} episodes and {total_tasks} tasks, "
                                f"the files hold {len(rows)} and {len(tasks)}; the dataset is damaged")
        self.episodes = rows[:total_episodes]
        self.tasks = tasks[:total_tasks]
        self._tasks_written = total_tasks
        self.total_frames = sum(int(r["length"]) for r in self.episodes)
        if self.total_frames != total_frames:
            raise RecorderError(f"{root}: meta/info.json counts {total_frames} frames, its episodes {self.total_frames}")
        if self.episodes:
            self.dataset_stats = stats.aggregate([stats.unflatten(r) for r in self.episodes])
        self._recover(extra_rows=len(rows) - total_episodes, extra_tasks=len(tasks) - total_tasks)

    def _recover(self, extra_rows: int, extra_tasks: int) -> None:
        """Cut off what an append that did not reach its commit point left behind (see the module docstring)."""
        root = self.root
        repaired: list[str] = []
        last = self.episodes[-1] if self.episodes else None
        keep_data = {(int(e["data/chunk_index"]), int(e["data/file_index"])) for e in self.episodes}
        for path in sorted((root / "data").glob("*/*.parquet")):
            pos = _position(path)
            if pos not in keep_data:
                path.unlink()
                repaired.append(f"removed {path.relative_to(root)}")
                continue
            import pyarrow.parquet as pq

            rows = self._rows_in(pos, "data")
            on_disk = pq.read_metadata(path).num_rows
            if on_disk > rows:
                files.write_parquet(root, path, pq.read_table(path).slice(0, rows), self.durable)
                repaired.append(f"cut {path.relative_to(root)} to {rows} rows")
            elif on_disk < rows:
                raise RecorderError(f"{path} holds {on_disk} rows, its episodes {rows}; the dataset is damaged")
        for key in self.video_keys:
            keep = {(int(e[f"videos/{key}/chunk_index"]), int(e[f"videos/{key}/file_index"])) for e in self.episodes}
            for path in sorted((root / "videos" / key).glob("*/*.mp4")):
                pos = _position(path)
                if pos not in keep:
                    path.unlink()
                    repaired.append(f"removed {path.relative_to(root)}")
                    continue
                frames = self._frames_in(pos, key)
                on_disk = video.frame_count(path)
                if on_disk > frames:
                    cut = files.staging_file(root, ".mp4")
                    try:
                        video.truncate(path, frames, self.fps, cut)
                        files.install(cut, path, self.durable)
                    finally:
                        cut.unlink(missing_ok=True)
                    repaired.append(f"cut {path.relative_to(root)} to {frames} frames")
                elif on_disk < frames:
                    raise RecorderError(f"{path} holds {on_disk} frames, its episodes {frames}; the dataset is damaged")
        if extra_tasks:
            self._write_tasks(self.tasks)
            repaired.append(f"dropped {extra_tasks} task(s) no episode uses")
        keep_meta = {(int(e["meta/episodes/chunk_index"]), int(e["meta/episodes/file_index"])) for e in self.episodes}
        for path in sorted((root / "meta/episodes").glob("*/*.parquet")):
            if _position(path) not in keep_meta:
                path.unlink()
                repaired.append(f"removed {path.relative_to(root)}")
        if extra_rows and last is not None:
            self._write_episode_rows((int(last["meta/episodes/chunk_index"]), int(last["meta/episodes/file_index"])),
                                     self.episodes)
            repaired.append(f"dropped {extra_rows} uncommitted episode row(s)")
        if extra_rows or not (root / STATS).exists():
            if self.dataset_stats is not None:
                files.write_json(root, root / STATS, self.dataset_stats, self.durable)
        if repaired:
            log.warning("dataset %s: an append had not finished (the recorder stopped mid-episode-commit); %s",
                        root, "; ".join(repaired))


def _position(path: Path) -> tuple[int, int]:
    """(chunk, file) of a ``chunk-XXX/file-YYY.*`` path."""
    try:
        return int(path.parent.name.removeprefix("chunk-")), int(path.stem.removeprefix("file-"))
    except ValueError:
        raise RecorderError(f"unexpected file {path} in the dataset") from None
