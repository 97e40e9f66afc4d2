"""Grab-to-caller latency of the camera sources: how old a frame is when the policy loop gets it.

Two ways a caller takes frames, both measured for the sim source (publisher in another process, like the hil
robot) and a video file (MJPG, decoded by FFmpeg, paced at its FPS, resized to the policy size):
- ``wait_latest``: the caller blocks for the next frame; latency = return time - capture time (the pipeline's
  own cost: socket, decode, colour conversion, resize, hand-off).
- ``latest`` at a 10 Hz control tick: the age of the frame the tick gets (adds up to one frame period of waiting,
  which is why the ratio to the frame period is printed). Each tick is shifted by a random fraction of a frame
  period, because a real camera's phase relative to the control loop is arbitrary, and a 30 fps publisher started
  with a 10 Hz loop would otherwise stay phase-locked to it and show an unrealistically small age.

    python bench/camera_latency.py [--seconds 5] [--fps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vla_edge.camera import open_source
from vla_edge.config import CameraSettings

TICK_HZ = 10.0


def _serve_sim(endpoint: str, fps: float, seconds: float) -> None:
    """The publisher side, run in its own process: render a 96×96 frame with OpenCV and publish it."""
    from hil.camera_publisher import FramePublisher

    period_ns = int(1e9 / fps)
    with FramePublisher(endpoint) as publisher:
        next_ns = time.monotonic_ns()
        end_ns = next_ns + int(seconds * 1e9)
        index = 0
        while time.monotonic_ns() < end_ns:
            image = np.zeros((96, 96, 3), np.uint8)
            cv2.circle(image, (index % 96, 48), 8, (255, 0, 0), -1)
            publisher.publish(image, time.monotonic_ns())
            index += 1
            next_ns += period_ns
            time.sleep(max(0.0, (next_ns - time.monotonic_ns()) / 1e9))


def _stats(values_ms: list[float]) -> dict[str, float]:
    array = np.asarray(values_ms)
    return {
        "n": int(array.size),
        "median_ms": round(float(np.median(array)), 3),
        "p99_ms": round(float(np.percentile(array, 99)), 3),
        "max_ms": round(float(array.max()), 3),
    }


def _measure(settings: CameraSettings, seconds: float, mode: str, period_s: float) -> dict[str, float]:
    latencies_ms: list[float] = []
    rng = np.random.default_rng(1)
    with open_source(settings) as source:
        # Let the connection/decoder warm up; the first frame's latency says nothing about steady state.
        if source.wait_latest(5.0, max_age_ms=60_000) is None:
            raise SystemExit(f"no frame from {settings.source}: {source.last_error}")
        end = time.monotonic() + seconds
        next_tick = time.monotonic()
        while time.monotonic() < end:
            if mode == "wait_latest":
                frame = source.wait_latest(1.0, max_age_ms=60_000)
            else:
                next_tick += 1.0 / TICK_HZ
                time.sleep(max(0.0, next_tick + rng.uniform(0.0, period_s) - time.monotonic()))
                frame = source.latest(max_age_ms=60_000)
            if frame is not None:
                latencies_ms.append((time.monotonic_ns() - frame.t_capture_ns) / 1e6)
        counters = source.counters()
    result = _stats(latencies_ms)
    result["overwritten"] = counters["overwritten"]
    return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _write_file(path: Path, fps: float, seconds: float) -> Path:
    size = (640, 480)  # a typical USB camera mode, resized to 96×96 by the source
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    for index in range(int(fps * seconds) + int(fps)):
        image = background.copy()
        cv2.circle(image, ((index * 7) % size[0], size[1] // 2), 40, (0, 0, 255), -1)
        writer.write(image)
    writer.release()
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--fps", type=float, default=30.0, help="publisher / file frame rate")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve-sim", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sim:
        _serve_sim(args.serve_sim, args.fps, args.seconds)
        return 0

    period_ms = 1000.0 / args.fps
    results: dict[str, dict[str, float]] = {}
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    for mode in ("wait_latest", "latest@10Hz"):
        publisher = subprocess.Popen(
            [sys.executable, __file__, "--serve-sim", endpoint, "--fps", str(args.fps), "--seconds", str(args.seconds + 4)]
        )
        try:
            results[f"sim/{mode}"] = _measure(
                CameraSettings(source="sim", sim_endpoint=endpoint), args.seconds, mode, period_ms / 1000
            )
        finally:
            publisher.wait(timeout=args.seconds + 10)
    with tempfile.TemporaryDirectory() as tmp:
        video = _write_file(Path(tmp) / "bench.avi", args.fps, args.seconds)
        for mode in ("wait_latest", "latest@10Hz"):
            results[f"file 640x480 MJPG/{mode}"] = _measure(
                CameraSettings(source=str(video)), args.seconds, mode, period_ms / 1000
            )

    print(f"frame period {period_ms:.1f} ms ({args.fps:g} fps); policy size 96x96; latency = caller time - capture time")
    print(f"{'source/mode':34s} {'n':>5s} {'median':>9s} {'p99':>9s} {'max':>9s} {'median/period':>14s}")
    for name, stats in results.items():
        stats["median_over_period"] = round(stats["median_ms"] / period_ms, 3)
        print(
            f"{name:34s} {stats['n']:5d} {stats['median_ms']:8.2f}ms {stats['p99_ms']:8.2f}ms {stats['max_ms']:8.2f}ms"
            f" {stats['median_over_period']:14.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"fps": args.fps, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
