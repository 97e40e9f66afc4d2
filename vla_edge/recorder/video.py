"""Episode videos with PyAV: encode while recording, decode for statistics, append and truncate without re-encoding.

Encoding: H.264 (or AV1) in MP4, yuv420p, a keyframe every 2 frames (LeRobot's choice: training reads frames at
random and must seek fast) and no B-frames, so every packet's presentation time equals its decode time and a
file can be extended by copying packets with shifted timestamps (``append``) or cut after a frame (``truncate``);
LeRobot v3.0 stores many episodes back to back in one file and finds each by its from/to timestamps.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np

from vla_edge.recorder.features import RecorderError
from vla_edge.recorder.stats import PixelHistogram

logging.getLogger("libav").setLevel(logging.ERROR)


class EpisodeVideo:
    """One view of one episode, encoded frame by frame into ``path`` (a staging file)."""

    def __init__(self, path: Path, fps: int, width: int, height: int, codec: str) -> None:
        import av  # the record extra; imported here so the daemon runs without it when recording is off

        self.path = Path(path)
        self.frames = 0
        self._container = av.open(str(self.path), mode="w", format="mp4")
        options = {"g": "2", "bf": "0"} if codec == "libx264" else {"g": "2"}
        try:
            self._stream = self._container.add_stream(codec, rate=fps, options=options)
        except Exception as exc:
            self._container.close()
            raise RecorderError(f"cannot encode video with {codec}: {exc}") from None
        self._stream.width = width
        self._stream.height = height
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = Fraction(1, fps)

    def add(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def finish(self) -> Path:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self.path

    def abandon(self) -> None:
        try:
            self._container.close()
        except Exception:  # an encoder in a bad state: the file is deleted anyway
            pass
        self.path.unlink(missing_ok=True)


def decoded_histogram(path: Path) -> PixelHistogram:
    """Pixel counts of every frame as a reader decodes it (RGB, what LeRobot's decoders return)."""
    import av

    histogram = PixelHistogram()
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            histogram.add(frame.to_ndarray(format="rgb24"))
    return histogram


def frame_count(path: Path) -> int:
    """Frames in a file, counted from its packets (no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.dts is not None and packet.size > 0)


def can_append(existing: Path, episode: Path) -> bool:
    """Whether ``episode`` can be copied onto the end of ``existing``: same codec, size, time base, parameters."""
    import av

    with av.open(str(existing)) as a, av.open(str(episode)) as b:
        sa, sb = a.streams.video[0], b.streams.video[0]
        return (
            sa.codec_context.name == sb.codec_context.name
            and (sa.width, sa.height, sa.pix_fmt) == (sb.width, sb.height, sb.pix_fmt)
            and sa.time_base == sb.time_base
            and bytes(sa.codec_context.extradata or b"") == bytes(sb.codec_context.extradata or b"")
        )


def append(existing: Path, existing_frames: int, episode: Path, fps: int, out: Path) -> None:
    """Write ``out`` = the first ``existing_frames`` frames of ``existing`` followed by all of ``episode``."""
    _remux([(existing, existing_frames), (episode, None)], fps, out)


def truncate(path: Path, frames: int, fps: int, out: Path) -> None:
    """Write ``out`` = the first ``frames`` frames of ``path`` (what a crashed append left after them is dropped)."""
    _remux([(path, frames)], fps, out)


def _remux(parts: list[tuple[Path, int | None]], fps: int, out: Path) -> None:
    import av

    inputs = [av.open(str(path)) for path, _ in parts]
    try:
        template = inputs[0].streams.video[0]
        time_base = template.time_base
        step = Fraction(1, fps) / time_base  # one frame in stream units
        if step.denominator != 1:
            raise RecorderError(f"video time base {time_base} does not hold whole frames at {fps} fps")
        with av.open(str(out), mode="w", format="mp4", options={"movflags": "faststart"}) as output:
            stream = output.add_stream_from_template(template)
            stream.time_base = time_base
            offset = 0
            for container, (_, limit) in zip(inputs, parts, strict=True):
                source = container.streams.video[0]
                if source.time_base != time_base:
                    raise RecorderError("cannot join videos with different time bases")
                kept = 0
                for packet in container.demux(source):
                    if packet.dts is None or packet.pts is None:
                        continue  # the demuxer's flush packet
                    if limit is not None and packet.pts >= limit * step.numerator:
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = stream
                    output.mux(packet)
                    kept += 1
                offset += kept * step.numerator
    finally:
        for container in inputs:
            container.close()
