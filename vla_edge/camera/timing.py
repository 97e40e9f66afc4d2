"""When was a frame captured? Logic without IO: arrival times and the source's own frame times in, capture times
and burst verdicts out (``GrabberSource`` feeds it; tests feed it numbers).

Stamping a frame when it arrives is wrong for a source that holds frames back and then delivers them in a burst
(a network camera, a congested link): frames 0.9 s old arrive as new. Two defences:

- **The source's clock.** OpenCV reports each frame's own time (``CAP_PROP_POS_MSEC``). For a V4L2 device that is
  the driver's buffer timestamp on CLOCK_MONOTONIC, the clock this process uses: taken as the capture time
  directly. For a network stream it is media time (RTP/PTS based, its origin unknown): mapped onto this clock by
  the smallest arrival-minus-media offset of the frames that arrived at the source's own pace in the last
  ``window_s`` (the link's usual delay), so a frame that arrives later than its siblings is seen as that much
  older. A stream clock that runs at another rate than its frames arrive (the lower envelope of the offsets
  moving more than 10 % over 20 s) is not trusted again until the source is reopened. Which clock: the
  device clock for V4L2, the stream clock for RTSP (RTP timestamps), arrival for HTTP(S): FFmpeg makes MJPEG
  frame times up at an assumed 25 fps; ``camera.clock = "source"`` trusts a URL's own times (MPEG-TS with real
  PTS), ``"arrival"`` never uses them. A link whose delay rises for good is refused for up to ``window_s``, then its new delay is
  the usual one: the mapping measures delay relative to the link's recent best, not absolute latency.
- **Bursts.** Frames arriving faster than the source's frame period (under 0.9 of it: a grabber slowed by a
  loaded machine works through a backlog at its decoding pace, only a caught-up one waits a whole period) right
  after a gap (over 2.5 periods) are frames that were held back: each such frame, and the one that opened the
  burst, is refused as stale. The first frame after a gap is never handed out on its own: the next frame shows
  whether it opened a burst, and replaces it if not (one frame period of latency after a gap, a loaded grabber
  cannot race it).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

_NS_PER_MS = 1_000_000
MONOTONIC_PLAUSIBLE_NS = 10_000_000_000  # a driver timestamp older than this, or in the future, is another clock
DRIFT_BLOCK_NS = 2_000_000_000
DRIFT_BLOCKS = 11  # 20 s of 2-second blocks before a clock's rate is judged


@dataclass(frozen=True)
class Stamp:
    """What ``FrameTiming.stamp`` decided for one frame."""

    t_capture_ns: int
    basis: str  # "device clock" (V4L2 buffer time), "stream clock" (media time mapped here) or "arrival"
    burst: bool  # part of a burst of held-back frames: refuse it
    retract_previous: bool  # this frame shows the previous one opened a burst: withdraw that one too
    hold_ns: int = 0  # came after a gap: not deliverable on its own (a later frame replaces it, or it ages out)


class FrameTiming:
    """Capture times and burst detection for one opened source. ``reset()`` on every (re)open."""

    def __init__(self, max_age_ms: float, window_s: float = 30.0, period_ms: float | None = None,
                 max_rate_error: float = 0.10) -> None:
        self._max_age_ns = int(max_age_ms * _NS_PER_MS)
        self._window_ns = int(window_s * 1e9)
        self._configured_period_ns = int(period_ms * _NS_PER_MS) if period_ms else None
        self._max_rate_error = max_rate_error
        self.reset()

    def reset(self) -> None:
        self._distrusted = False
        self._offsets: deque[tuple[int, int]] = deque()  # (arrival_ns, offset_ns) of paced frames; a min-deque
        self._blocks: deque[tuple[int, int]] = deque(maxlen=DRIFT_BLOCKS)  # (2 s block, its smallest offset)
        self._last_media_ns: int | None = None
        self._last_arrival_ns: int | None = None
        self._last_gap = True  # opening is a gap: what a stream flushes right after it (FFmpeg's probe) is old
        self._in_burst = False
        self._intervals: deque[int] = deque(maxlen=31)  # arrival intervals outside bursts (the median is robust)
        self._media_intervals: deque[int] = deque(maxlen=31)

    @property
    def source_clock_distrusted(self) -> bool:
        return self._distrusted

    @property
    def period_ns(self) -> int | None:
        """The source's frame period: configured (capture_fps), else the median interval of its own frame times,
        else of arrivals; None until five intervals are known."""
        if self._configured_period_ns:
            return self._configured_period_ns
        for intervals in (self._media_intervals, self._intervals):
            if len(intervals) >= 5:
                return int(statistics.median(intervals))
        return None

    def stamp(self, arrival_ns: int, source_ms: float | None = None, clock: str = "stream") -> Stamp:
        """The capture time of a frame that arrived at ``arrival_ns`` (monotonic), the source saying ``source_ms``
        on its ``clock``: "device" (a V4L2 buffer time, CLOCK_MONOTONIC) or "stream" (media time)."""
        media_ns = None
        if source_ms is not None and math.isfinite(source_ms) and source_ms > 0:
            media_ns = int(source_ms * _NS_PER_MS)
        dt = None if self._last_arrival_ns is None else arrival_ns - self._last_arrival_ns
        media_dt = None
        if media_ns is not None and self._last_media_ns is not None:
            if media_ns < self._last_media_ns:
                self._offsets.clear()  # the source's clock went back (a restart, a wrap): map it again
                self._blocks.clear()
            else:
                media_dt = media_ns - self._last_media_ns
                if media_dt > 0:
                    self._media_intervals.append(media_dt)
        period = self.period_ns
        burst = retract = paced = False
        hold_ns = 0
        if dt is not None:
            if period is None:
                self._intervals.append(dt)
            else:
                # "Faster than the camera" is under 0.9 periods: a grabber slowed by a loaded machine works through
                # a backlog at its own decoding pace, well above period / 4, but only a grabber that is caught up
                # waits a whole period for the next frame.
                fast, gap = dt < 0.9 * period, dt > 2.5 * period
                if self._in_burst:
                    self._in_burst = fast
                elif fast and self._last_gap:
                    self._in_burst = retract = True  # the frame after the gap was the first of the burst
                burst = self._in_burst
                paced = period / 2 <= dt <= 2 * period
                self._last_gap = gap
                if not burst:  # a burst's intervals say nothing about the camera's pace
                    self._intervals.append(dt)
                if gap:
                    hold_ns = self._max_age_ns
        self._last_arrival_ns = arrival_ns
        self._last_media_ns = media_ns
        mapped = None if media_ns is None else self._from_source(media_ns, media_dt, dt, arrival_ns, paced, clock)
        t_capture, basis = mapped if mapped is not None else (arrival_ns, "arrival")
        return Stamp(t_capture_ns=t_capture, basis=basis, burst=burst, retract_previous=retract, hold_ns=hold_ns)

    def _from_source(self, media_ns: int, media_dt: int | None, dt: int | None, arrival_ns: int,
                     paced: bool, clock: str) -> tuple[int, str] | None:
        if self._distrusted:
            return None
        if clock == "device":
            # A driver on another clock (some report the time of day) shows as implausible: arrival it is then.
            return (media_ns, "device clock") if 0 <= arrival_ns - media_ns <= MONOTONIC_PLAUSIBLE_NS else None
        offset = arrival_ns - media_ns
        if media_dt is not None and not self._in_burst:  # a burst's (and FFmpeg's probe flush's) delays are not usual
            while self._offsets and self._offsets[-1][1] >= offset:
                self._offsets.pop()
            self._offsets.append((arrival_ns, offset))
            if self._drifts(arrival_ns, offset):
                self._distrusted = True
                return None
        while self._offsets and self._offsets[0][0] < arrival_ns - self._window_ns:
            self._offsets.popleft()
        if not self._offsets:
            return None  # no ordinary frame yet: nothing tells the link's usual delay
        return min(arrival_ns, media_ns + self._offsets[0][1]), "stream clock"

    def _drifts(self, arrival_ns: int, offset: int) -> bool:
        """Does the lower envelope of the offsets move faster than ``max_rate_error`` (a clock at another rate)?

        Minima over 2-second blocks, compared across at least 20 s: load and jitter only ever add delay, so the
        minima are the link's best; a step in its delay moves them once (0.9 s over 20 s is 4.5 %, allowed), a
        clock at another rate moves them steadily (FFmpeg's 25 fps for a 20 fps MJPEG stream: 25 %)."""
        block = arrival_ns // DRIFT_BLOCK_NS
        if self._blocks and self._blocks[-1][0] == block:
            if offset < self._blocks[-1][1]:
                self._blocks[-1] = (block, offset)
        else:
            self._blocks.append((block, offset))
        if len(self._blocks) < DRIFT_BLOCKS:
            return False
        first_block, last_block = self._blocks[0][0], self._blocks[-1][0]
        early = min(o for _, o in list(self._blocks)[:3])
        late = min(o for _, o in list(self._blocks)[-3:])
        span_ns = (last_block - first_block - 2) * DRIFT_BLOCK_NS
        return span_ns > 0 and abs(late - early) / span_ns > self._max_rate_error
