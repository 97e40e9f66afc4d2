"""What an episode's commit costs as the shared v3.0 files grow (the price of LeRobot's many-episodes-per-file).

    python -m bench.recorder_append --frames 0 20000 60000 --out bench/results/recorder

For each size, a dataset whose current data and video files already hold that many frames (rendered reference
world frames, 25 per episode, appended without fsync to build it quickly), then ``--episodes`` more episodes of 25
frames appended the way the daemon does (durable: every file fsynced) and each ``end_episode`` timed: encoding
flush, decode for the image statistics, the data file and video file rewritten, meta files, info.json. One run,
same machine, sizes interleaved per episode; the ratio to the empty dataset is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from hil.world import TabletopWorld
from vla_edge.recorder import EpisodeRecorder, RecordingFeatures

EPISODE = 25


def frames(world: TabletopWorld, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for _ in range(EPISODE):
        world.step(np.array([*rng.uniform(0.2, 0.8, 2), 0.0, 0.0]))
        out.append(world.render())
    return out


def append(recorder: EpisodeRecorder, images: list[np.ndarray]) -> float:
    for i, image in enumerate(images):
        recorder.add_frame(image, np.zeros(3), np.array([0.5, 0.5, 0.0, float(i == EPISODE - 1)]), False,
                           "put the red block in the left bin")
    started = time.perf_counter()
    recorder.end_episode(True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recorder_append", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 20000, 60000])
    parser.add_argument("--episodes", type=int, default=10, help="timed appends per size")
    parser.add_argument("--out", type=Path, default=Path("bench/results/recorder"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    world = TabletopWorld(0)
    features = RecordingFeatures()
    work = Path(tempfile.mkdtemp(prefix="vla-edge-recorder-bench-"))
    try:
        recorders = {}
        for size in args.frames:
            root = work / f"ds-{size}"
            bulk = EpisodeRecorder(root, 10, features, durable=False, data_file_mb=1e6, video_file_mb=1e6)
            clip = frames(world, rng)
            for _ in range(size // EPISODE):
                append(bulk, clip)
            recorders[size] = EpisodeRecorder(root, 10, features, data_file_mb=1e6, video_file_mb=1e6)
        times: dict[int, list[float]] = {size: [] for size in args.frames}
        for _ in range(args.episodes):
            clip = frames(world, rng)
            for size in args.frames:  # interleaved: machine load hits every size alike
                times[size].append(append(recorders[size], clip))
        sizes_mb = {size: round(sum(p.stat().st_size for p in (work / f"ds-{size}").rglob("*.mp4")) / 2**20, 2)
                    for size in args.frames}
        base = float(np.median(times[args.frames[0]]))
        rows = [{"frames_in_file": size, "video_mb": sizes_mb[size],
                 "commit_ms_median": round(1e3 * float(np.median(t)), 1),
                 "commit_ms_max": round(1e3 * max(t), 1), "vs_first": round(float(np.median(t)) / base, 2)}
                for size, t in times.items()]
        for row in rows:
            print(f"{row['frames_in_file']:>7} frames in the current files ({row['video_mb']:6.2f} MB of video): "
                  f"commit median {row['commit_ms_median']:7.1f} ms, max {row['commit_ms_max']:7.1f} ms, "
                  f"{row['vs_first']:.2f}x the first row")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "recorder_append.json").write_text(json.dumps(rows, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
