"""Chunk scheduling: inference overlaps execution, chunk boundaries do not jerk, late actions are dropped.

The scheduler keeps a *timeline*: actions indexed by the control tick at which they are due. A worker thread
turns an inference request (observation + the actions already committed for the next ticks) into a new chunk.
The control tick (`ChunkScheduler.tick`) is the one place that decides what goes to the motors:

* it takes the action due at this tick, never one whose tick has passed (late actions are dropped, counted);
* it asks for the next chunk when the remaining actions fall to ``replan_when_remaining``. With ``plan_ahead``
  (the default) the executor asks half a tick after an action was sent (`ChunkScheduler.plan_ahead`), from the
  frame that shows that action executed, for a chunk that starts at the next tick: the new chunk's first row runs,
  as in the synchronous loop the policy was evaluated in, and inference still overlaps execution. While the arm
  holds, the frame of this tick is as good, so the request goes out at once. Without ``plan_ahead`` the request is
  made at the tick from the frame taken before that tick's action, and the chunk's first row is usually late;
* it splices an arrived chunk in from the current tick on. How the boundary is handled is a setting:
  ``none`` (the new chunk, planned from the newest observation and state, takes over; the confidence monitor's
  jerk check guards the junction), ``freeze`` (the actions that run while inference is in flight are passed as a
  frozen prefix, as in real-time chunking) or ``blend`` (cross-fade over a few ticks). ``none`` is the default
  because it measured best with the reference policy, which was not trained with inpainting (docs/scheduler.md);
* it holds when there is nothing valid to execute: no chunk, a rejected (low-confidence) chunk, no frame.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from vla_edge.types import ChunkSamples, Observation, Verdict

HoldReason = str  # "no_chunk", "low_confidence", "inference_error", or why the caller held (e.g. "camera_stalled")


@dataclass(frozen=True)
class InferenceRequest:
    """Plan a chunk whose first action is due at ``start_tick``; ``prefix`` rows are already committed."""

    observation: Observation
    start_tick: int
    prefix: np.ndarray


@dataclass(frozen=True)
class PlannedChunk:
    """What the inference worker produced: all samples, the verdict on them, and the chunk to execute."""

    request: InferenceRequest
    samples: ChunkSamples
    verdict: Verdict
    chunk: np.ndarray
    latency_ms: float


@dataclass(frozen=True)
class TickDecision:
    """The scheduler's answer for one control tick: an action to send, or a hold with its reason."""

    tick: int
    action: np.ndarray | None
    hold_reason: HoldReason | None = None
    new_chunk: PlannedChunk | None = None
    rejected_chunk: PlannedChunk | None = None


@dataclass
class SchedulerCounters:
    ticks: int = 0
    actions_sent: int = 0
    holds: int = 0
    late_dropped: int = 0
    chunks_requested: int = 0
    chunks_accepted: int = 0
    chunks_rejected: int = 0
    inference_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


Planner = Callable[[InferenceRequest], PlannedChunk]
ObservationProvider = Callable[[], Observation | None]


class _InferenceWorker:
    """One background thread; at most one request in flight and one finished result waiting (newest wins)."""

    def __init__(self, planner: Planner) -> None:
        self._planner = planner
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: InferenceRequest | None = None
        self._result: PlannedChunk | Exception | None = None
        self._busy = False
        self._closed = False
        self._generation = 0
        self._thread = threading.Thread(target=self._run, name="vla-inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._busy or self._pending is not None

    def submit(self, request: InferenceRequest) -> None:
        with self._lock:
            self._pending = request
            self._wake.notify()

    def take_result(self) -> PlannedChunk | Exception | None:
        with self._lock:
            result, self._result = self._result, None
            return result

    def discard(self) -> None:
        """Forget the pending request and any result, including one still being computed."""
        with self._lock:
            self._pending = None
            self._result = None
            self._generation += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                request, self._pending = self._pending, None
                self._busy = True
                generation = self._generation
            try:
                result: PlannedChunk | Exception = self._planner(request)
            except Exception as exc:  # reported to the tick, which holds; the worker keeps serving
                result = exc
            with self._lock:
                self._busy = False
                if generation == self._generation:
                    self._result = result


class ChunkScheduler:
    """The action timeline and the decision made at every control tick."""

    def __init__(
        self,
        planner: Planner,
        observe: ObservationProvider,
        *,
        horizon: int,
        action_dim: int,
        replan_when_remaining: int = 4,
        boundary: Literal["none", "freeze", "blend"] = "none",
        blend_steps: int = 3,
        expected_delay_ticks: int = 1,
        plan_ahead: bool = True,
    ) -> None:
        if not 1 <= replan_when_remaining < horizon:
            raise ValueError(f"replan_when_remaining must be in [1, {horizon - 1}], got {replan_when_remaining}")
        self._observe = observe
        self._horizon = horizon
        self._action_dim = action_dim
        self._replan_when_remaining = replan_when_remaining
        self._boundary = boundary
        self._blend_steps = blend_steps
        self._delay_ticks = max(1, expected_delay_ticks)
        self._plan_ahead = plan_ahead
        self._timeline: dict[int, np.ndarray] = {}
        self._blocked: PlannedChunk | None = None
        self._worker = _InferenceWorker(planner)
        self.counters = SchedulerCounters()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._worker.close()

    def __enter__(self) -> ChunkScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the timeline and anything in flight (a new step, or after a hold)."""
        self._worker.discard()
        self._timeline.clear()
        self._blocked = None

    @property
    def blocked(self) -> PlannedChunk | None:
        return self._blocked

    def remaining(self, tick: int) -> int:
        return sum(1 for t in self._timeline if t >= tick)

    # -- the control tick ------------------------------------------------------------------------------------
    def tick(self, tick: int) -> TickDecision:
        """Decide what the motors do at control tick ``tick`` (ticks are consecutive integers)."""
        self.counters.ticks += 1
        new_chunk, rejected = self._collect_result(tick)

        if self._blocked is not None:
            # Held until reset(): an operator's approval makes the executor accept the next chunk instead.
            return self._hold(tick, "low_confidence", new_chunk, rejected)

        for stale in [t for t in self._timeline if t < tick]:
            del self._timeline[stale]
            self.counters.late_dropped += 1

        if not self._plan_ahead:
            self._maybe_request(tick)

        action = self._timeline.pop(tick, None)
        if action is None:
            if self._plan_ahead:
                # The arm does not move during this tick, so this tick's frame already shows where it will be.
                self._maybe_request(tick + 1)
            reason: HoldReason = "no_chunk" if self.counters.inference_errors == 0 else "inference_error"
            return self._hold(tick, reason, new_chunk, rejected)
        self.counters.actions_sent += 1
        return TickDecision(tick=tick, action=action, new_chunk=new_chunk, rejected_chunk=rejected)

    def plan_ahead(self, next_tick: int) -> None:
        """Between ticks, after the action of ``next_tick - 1`` was sent and a frame showing it has arrived: ask
        for the chunk starting at ``next_tick`` if the timeline runs short. No-op unless ``plan_ahead`` is set."""
        if self._plan_ahead and self._blocked is None:
            self._maybe_request(next_tick)

    def _hold(
        self, tick: int, reason: HoldReason, new_chunk: PlannedChunk | None, rejected: PlannedChunk | None
    ) -> TickDecision:
        self.counters.holds += 1
        return TickDecision(tick=tick, action=None, hold_reason=reason, new_chunk=new_chunk, rejected_chunk=rejected)

    def _collect_result(self, tick: int) -> tuple[PlannedChunk | None, PlannedChunk | None]:
        result = self._worker.take_result()
        if result is None:
            return None, None
        if isinstance(result, Exception):
            self.counters.inference_errors += 1
            return None, None
        self.counters.inference_errors = 0
        self.counters.latencies_ms.append(result.latency_ms)
        if not result.verdict.passed:
            self.counters.chunks_rejected += 1
            # Never actuate a low-confidence chunk, nor what is left of the one it was meant to replace.
            self._timeline.clear()
            self._blocked = result
            return None, result
        self.counters.chunks_accepted += 1
        self._splice(result, tick)
        return result, None

    def _splice(self, planned: PlannedChunk, tick: int) -> None:
        start = planned.request.start_tick
        fresh = {start + i: planned.chunk[i] for i in range(planned.chunk.shape[0]) if start + i >= tick}
        if self._boundary == "blend":
            for k, t in enumerate(sorted(fresh)[: self._blend_steps]):
                old = self._timeline.get(t)
                if old is not None:
                    weight = (k + 1) / (self._blend_steps + 1)
                    fresh[t] = (1.0 - weight) * old + weight * fresh[t]
        for t in [t for t in self._timeline if t >= tick]:
            del self._timeline[t]
        self._timeline.update(fresh)

    def _maybe_request(self, tick: int) -> None:
        """Ask for a chunk whose first action is due at ``tick`` if fewer than enough actions are left from there."""
        if self._worker.busy or self._blocked is not None:
            return
        if self.remaining(tick) > self._replan_when_remaining:
            return
        observation = self._observe()
        if observation is None:
            return
        committed: list[np.ndarray] = []
        if self._boundary == "freeze":
            # The actions that will run while this request is being computed are committed: freeze them.
            committed = [self._timeline[t] for t in range(tick, tick + self._delay_ticks) if t in self._timeline]
        prefix = np.asarray(committed, dtype=np.float32).reshape(-1, self._action_dim)
        self._worker.submit(InferenceRequest(observation=observation, start_tick=tick, prefix=prefix))
        self.counters.chunks_requested += 1


class RateLoop:
    """Fixed-rate pacing on the monotonic clock; reports how late each tick started."""

    def __init__(self, rate_hz: float) -> None:
        self.period_ns = int(round(1e9 / rate_hz))
        self._next_ns = time.monotonic_ns()
        self.tick = 0

    def wait(self) -> int:
        """Sleep until the next tick is due; returns its lateness in ns (0 when on time)."""
        now = time.monotonic_ns()
        if now < self._next_ns:
            time.sleep((self._next_ns - now) / 1e9)
            now = time.monotonic_ns()
        lateness = now - self._next_ns
        # A tick that starts more than a whole period late is skipped rather than bunched up.
        missed = max(0, lateness // self.period_ns)
        self.tick += 1 + int(missed)
        self._next_ns += self.period_ns * (1 + int(missed))
        return int(lateness)

    def wait_phase(self, fraction: float) -> None:
        """Sleep until ``fraction`` of the current tick's period has passed (at once if it already has)."""
        target = self._next_ns - int(self.period_ns * (1.0 - fraction))
        now = time.monotonic_ns()
        if now < target:
            time.sleep((target - now) / 1e9)


log = logging.getLogger(__name__)


@contextmanager
def realtime_tick(priority: int | None, switch_interval_ms: float = 0.5) -> Iterator[bool]:
    """Run the calling thread (the control tick) at ``SCHED_FIFO`` ``priority`` while inside; ``None``: as is.

    Yields whether real-time scheduling is in force. Linux only; needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at
    least ``priority`` (systemd: ``LimitRTPRIO=`` and ``RestrictRealtime=no``). Not permitted: a warning, and the
    tick runs at normal priority. A woken real-time thread still needs the GIL, which a thread running Python code
    gives up only every switch interval (5 ms by default), so the interval is shortened while inside and restored
    after, and the objects alive on entry are frozen out of garbage collection (``gc.freeze``) until exit, so a
    collection in another thread cannot hold the GIL for long. Threads started inside inherit the policy: start workers first (the inference worker is). This lowers
    tick jitter; it does not make vla-edge a real-time or safety-rated system.
    """
    if priority is None:
        yield False
        return
    try:
        previous = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError, AttributeError) as exc:
        log.warning("control tick stays at normal priority: SCHED_FIFO %d not permitted (%s); grant it with "
                    "LimitRTPRIO=%d and RestrictRealtime=no in the unit, or unset scheduler.realtime_priority",
                    priority, exc, priority)
        yield False
        return
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval_ms / 1e3)
    # A full garbage collection, triggered by whichever thread allocates, holds the GIL for milliseconds over
    # every live object; frozen objects (all there are now: models, sessions, sockets) are no longer scanned.
    was_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield True
    finally:
        if not was_frozen:
            gc.unfreeze()
        sys.setswitchinterval(switch_interval)
        os.sched_setscheduler(0, previous[0], previous[1])
