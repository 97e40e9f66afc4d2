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
  The threshold grows with the *measured* inference delay (`DelayEstimator`: a high quantile of how many ticks
  recent chunks arrived after their first row was due), so a slow policy's next chunk is asked for while the
  current one still has enough actions to run until it arrives (``request_by_delay``);
* it splices an arrived chunk in from the current tick on. How the boundary is handled is a setting:
  ``none`` (the new chunk, planned from the newest observation and state, takes over; the confidence monitor's
  jerk check guards the junction), ``freeze`` (the actions that will run while inference is in flight, as many as
  the estimated delay, are passed as a frozen prefix), ``rtc`` (real-time chunking: that frozen prefix, and the
  rest of the executing chunk after it as a soft target the sampler is guided towards) or ``blend`` (cross-fade
  over a few ticks). The default, ``auto``, is ``none`` while chunks arrive in time (the estimated delay is 0, as
  for the reference policy, which was not trained with inpainting: ``none`` measured best there) and ``rtc`` once
  they arrive a tick or more late (docs/scheduler.md);
* a chunk whose request found the arm about to run out of actions, and which arrives after they ran out, is
  re-timed: the arm held in between and did not move, so its first row not covered by the actions that ran is
  due at the arrival tick, not dropped as late;
* it holds when there is nothing valid to execute: no chunk, a rejected (low-confidence) chunk, no frame.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from vla_edge.clock import Clock, MonotonicClock
from vla_edge.types import ChunkSamples, Observation, Verdict

log = logging.getLogger(__name__)

HoldReason = str  # "no_chunk", "low_confidence", "inference_error", or why the caller held (e.g. "camera_stalled")


@dataclass(frozen=True)
class InferenceRequest:
    """Plan a chunk whose first action is due at ``start_tick``.

    ``prefix``: committed actions the new chunk must start with (frozen: they will run while it is computed);
    ``guide``: with real-time chunking, the executing chunk's actions after the prefix (a soft target; possibly
    none), else None;
    ``committed``: how many consecutive actions from ``start_tick`` on were in the timeline when the request was
    made (the arm runs those whatever the new chunk says). ``attempt`` is 0 for a chunk asked for in the normal
    course, n for the n-th re-sample after a refused chunk."""

    observation: Observation
    start_tick: int
    prefix: np.ndarray
    attempt: int = 0
    guide: np.ndarray | None = None
    committed: int = 0


@dataclass(frozen=True)
class PlannedChunk:
    """What the planner produced: all samples, the verdict on them, and the chunk to execute.

    ``waiver`` says why a chunk whose verdict failed may run anyway (the operator approved it; the gate is off in
    shadow mode); None for every other chunk. The scheduler actuates a chunk only when it is ``admitted``."""

    request: InferenceRequest
    samples: ChunkSamples
    verdict: Verdict
    chunk: np.ndarray
    latency_ms: float
    waiver: str | None = None
    tier: str = "local"  # which policy tier settled it (vla_edge.routing): local, remote, or operator (none passed)

    @property
    def admitted(self) -> bool:
        return self.verdict.passed or self.waiver is not None


@dataclass(frozen=True)
class TickDecision:
    """The scheduler's answer for one control tick: an action to send (and the chunk it comes from), or a hold
    with its reason. ``new_chunk``/``rejected_chunk``: a chunk that arrived at this tick and was spliced in or
    refused; ``escalate``: the refusals used up their re-samples, the arm holds until ``reset``."""

    tick: int
    action: np.ndarray | None
    hold_reason: HoldReason | None = None
    new_chunk: PlannedChunk | None = None
    rejected_chunk: PlannedChunk | None = None
    chunk: PlannedChunk | None = None
    escalate: bool = False


@dataclass
class SchedulerCounters:
    ticks: int = 0
    actions_sent: int = 0
    holds: int = 0
    late_dropped: int = 0
    chunks_requested: int = 0
    chunks_accepted: int = 0
    chunks_rejected: int = 0
    resamples: int = 0  # requests made to replace a refused chunk
    recovered: int = 0  # refusals followed by an accepted re-sample (no escalation)
    escalations: int = 0  # refusals that used up the re-samples
    retimed: int = 0  # chunks that arrived after the arm had run out of actions: re-timed to start at arrival
    delays_ticks: list[int] = field(default_factory=list)  # per chunk: ticks between its first row's due tick and arrival
    inference_errors: int = 0  # in a row (reset by a chunk); the tick reports "inference_error" while > 0
    inference_errors_total: int = 0
    latencies_ms: list[float] = field(default_factory=list)


Planner = Callable[[InferenceRequest], PlannedChunk]
ObservationProvider = Callable[[], Observation | None]


@dataclass(frozen=True)
class Recovery:
    """What happens when a chunk is refused: up to ``tries`` re-samples from fresh frames while no more than
    ``deadline_ticks`` have passed since the first refusal; the already-judged actions of the chunk before keep
    running meanwhile. ``tries=0``: escalate at once (the arm holds and nothing of the old chunk runs)."""

    tries: int = 0
    deadline_ticks: int = 10


class DelayEstimator:
    """How late a requested chunk arrives, in control ticks: a high quantile of the most recent measurements.

    A measurement is the number of ticks between the tick a chunk's first row was due and the tick the chunk was
    taken in (0 for a policy that plans within half a tick). Pure logic: the scheduler feeds it; tests drive it."""

    def __init__(self, quantile: float = 0.9, window: int = 20, initial: int = 0) -> None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"delay quantile must be in (0, 1], got {quantile}")
        if window < 1:
            raise ValueError(f"delay window must be at least 1, got {window}")
        self._quantile = quantile
        self._window = window
        self._initial = max(0, int(initial))
        self._recent: list[int] = []

    def observe(self, ticks: int) -> None:
        self._recent.append(max(0, int(ticks)))
        del self._recent[: -self._window]

    @property
    def ticks(self) -> int:
        """The estimate: the nearest-rank ``quantile`` of the window (the initial value before any measurement)."""
        if not self._recent:
            return self._initial
        ordered = sorted(self._recent)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(self._quantile * len(ordered)) - 1))]


def _plan_or_error(planner: Planner, request: InferenceRequest) -> PlannedChunk | Exception:
    try:
        return planner(request)
    except Exception as exc:  # reported to the tick, which holds; inference keeps serving
        log.exception("planning the chunk for tick %d failed", request.start_tick)
        return exc


class Inference(Protocol):
    """Runs planner requests: at most one in flight, and one finished result waiting (newest wins)."""

    @property
    def busy(self) -> bool:
        """A request is in flight or its result has not been taken yet: a request made now would be planned
        without the actions of the chunk about to be spliced in."""
        ...

    def submit(self, request: InferenceRequest) -> None: ...

    def take_result(self) -> PlannedChunk | Exception | None: ...

    def discard(self) -> None: ...

    def close(self) -> None: ...


class ThreadedInference:
    """One background thread (the robot's mode): inference overlaps the control ticks in real time."""

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
            return self._busy or self._pending is not None or self._result is not None

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
            result = _plan_or_error(self._planner, request)
            with self._lock:
                self._busy = False
                if generation == self._generation:
                    self._result = result


class SimulatedInference:
    """Simulated time: the planner runs at once in the calling thread (no thread), and its result becomes
    available ``delay_s`` simulated seconds after the request (``delay_s`` may be a function of the planned
    chunk, e.g. its measured latency). A delay shorter than half a tick behaves like the robot's worker on a fast
    policy: planned ahead, the chunk is there at the next tick. A 1.5 s delay at 10 Hz keeps it 15 ticks away."""

    def __init__(self, planner: Planner, clock: Clock, delay_s: float | Callable[[PlannedChunk], float] = 0.0) -> None:
        self._planner = planner
        self._clock = clock
        self._delay = delay_s
        self._waiting: tuple[int, PlannedChunk | Exception] | None = None

    @property
    def busy(self) -> bool:
        return self._waiting is not None

    def submit(self, request: InferenceRequest) -> None:
        submitted = self._clock.now_ns()
        result = _plan_or_error(self._planner, request)
        delay = self._delay
        if callable(delay):
            delay = 0.0 if isinstance(result, Exception) else delay(result)
        self._waiting = (submitted + int(round(delay * 1e9)), result)

    def take_result(self) -> PlannedChunk | Exception | None:
        if self._waiting is None or self._waiting[0] > self._clock.now_ns():
            return None
        result, self._waiting = self._waiting[1], None
        return result

    def discard(self) -> None:
        self._waiting = None

    def close(self) -> None:
        self._waiting = None


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
        boundary: Literal["auto", "none", "freeze", "rtc", "blend"] = "none",
        blend_steps: int = 3,
        expected_delay_ticks: int = 0,
        plan_ahead: bool = True,
        recovery: Recovery = Recovery(),
        inference: Inference | None = None,
        request_by_delay: bool = True,
        delay: DelayEstimator | None = None,
    ) -> None:
        if not 1 <= replan_when_remaining < horizon:
            raise ValueError(f"replan_when_remaining must be in [1, {horizon - 1}], got {replan_when_remaining}")
        self._observe = observe
        self._horizon = horizon
        self._action_dim = action_dim
        self._replan_when_remaining = replan_when_remaining
        self._boundary = boundary
        self._blend_steps = blend_steps
        self.delay = delay if delay is not None else DelayEstimator(initial=expected_delay_ticks)
        self._request_by_delay = request_by_delay
        self._plan_ahead = plan_ahead
        self._recovery = recovery
        self._timeline: dict[int, tuple[np.ndarray, PlannedChunk]] = {}
        self._blocked: PlannedChunk | None = None
        self._refusals = 0  # refused chunks since the last accepted one
        self._first_refusal_tick: int | None = None
        self._inference: Inference = inference if inference is not None else ThreadedInference(planner)
        self.counters = SchedulerCounters()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._inference.close()

    def __enter__(self) -> ChunkScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the timeline and anything in flight (a new step, or after a hold)."""
        self._inference.discard()
        self._timeline.clear()
        self._blocked = None
        self._refusals = 0
        self._first_refusal_tick = None

    @property
    def blocked(self) -> PlannedChunk | None:
        return self._blocked

    @property
    def recovering(self) -> bool:
        """A chunk was refused and a re-sample is being tried (the arm finishes the old chunk, or holds)."""
        return self._refusals > 0 and self._blocked is None

    @property
    def boundary(self) -> str:
        """The boundary mode in force: ``auto`` is ``rtc`` while the estimated delay is a tick or more, else ``none``."""
        if self._boundary == "auto":
            return "rtc" if self.delay.ticks >= 1 else "none"
        return self._boundary

    def remaining(self, tick: int) -> int:
        return sum(1 for t in self._timeline if t >= tick)

    def request_threshold(self) -> int:
        """Ask for the next chunk when this few actions are left: ``replan_when_remaining``, or with
        ``request_by_delay`` enough to run until a chunk asked for now arrives (estimated delay + 1), at most H − 1.
        With a delay of H/2 ticks or more the arm cannot keep moving: a chunk runs out before the next arrives."""
        threshold = self._replan_when_remaining
        if self._request_by_delay:
            threshold = max(threshold, min(self.delay.ticks + 1, self._horizon - 1))
        return threshold

    # -- the control tick ------------------------------------------------------------------------------------
    def tick(self, tick: int) -> TickDecision:
        """Decide what the motors do at control tick ``tick`` (ticks are consecutive integers)."""
        self.counters.ticks += 1
        new_chunk, rejected = self._collect_result(tick)

        if self._blocked is not None:
            # Held until reset(): an operator's approval makes the executor accept the next chunk instead.
            return self._hold(tick, "low_confidence", new_chunk, rejected, escalate=rejected is not None)

        for stale in [t for t in self._timeline if t < tick]:
            del self._timeline[stale]
            self.counters.late_dropped += 1

        if not self._plan_ahead:
            self._maybe_request(tick)

        due = self._timeline.pop(tick, None)
        if due is None:
            if self._plan_ahead:
                # The arm does not move during this tick, so this tick's frame already shows where it will be.
                self._maybe_request(tick + 1)
            reason: HoldReason
            if self._refusals:
                reason = "resampling"
            else:
                reason = "no_chunk" if self.counters.inference_errors == 0 else "inference_error"
            return self._hold(tick, reason, new_chunk, rejected)
        self.counters.actions_sent += 1
        action, source = due
        return TickDecision(tick=tick, action=action, new_chunk=new_chunk, rejected_chunk=rejected, chunk=source)

    def plan_ahead(self, next_tick: int) -> None:
        """Between ticks, after the action of ``next_tick - 1`` was sent and a frame showing it has arrived: ask
        for the chunk starting at ``next_tick`` if the timeline runs short. No-op unless ``plan_ahead`` is set."""
        if self._plan_ahead and self._blocked is None:
            self._maybe_request(next_tick)

    def _hold(
        self, tick: int, reason: HoldReason, new_chunk: PlannedChunk | None, rejected: PlannedChunk | None,
        escalate: bool = False,
    ) -> TickDecision:
        self.counters.holds += 1
        return TickDecision(tick=tick, action=None, hold_reason=reason, new_chunk=new_chunk, rejected_chunk=rejected,
                            escalate=escalate)

    def _collect_result(self, tick: int) -> tuple[PlannedChunk | None, PlannedChunk | None]:
        result = self._inference.take_result()
        if result is None:
            return None, None
        if isinstance(result, Exception):
            self.counters.inference_errors += 1
            self.counters.inference_errors_total += 1
            return None, None
        self.counters.inference_errors = 0
        self.counters.latencies_ms.append(result.latency_ms)
        late = tick - result.request.start_tick
        self.counters.delays_ticks.append(late)
        self.delay.observe(late)
        if not result.admitted:
            self.counters.chunks_rejected += 1
            self._refuse(result, tick)
            return None, result
        self.counters.chunks_accepted += 1
        if self._refusals:
            self.counters.recovered += 1
        self._refusals, self._first_refusal_tick = 0, None
        self._splice(result, tick)
        return result, None

    def _refuse(self, result: PlannedChunk, tick: int) -> None:
        """Never actuate a refused chunk. While re-samples are left, the actions of the chunk before (judged and
        accepted when it arrived) keep running and a fresh frame is planned again; otherwise nothing runs."""
        if self._first_refusal_tick is None:
            self._first_refusal_tick = tick
        self._refusals += 1
        within = tick - self._first_refusal_tick <= self._recovery.deadline_ticks
        if self._refusals <= self._recovery.tries and within:
            return
        self.counters.escalations += 1
        self._timeline.clear()
        self._blocked = result

    def _splice(self, planned: PlannedChunk, tick: int) -> None:
        request = planned.request
        start = request.start_tick
        first_free = start + request.committed  # the first tick the timeline had no action for at request time
        if tick > first_free:
            # The actions committed when this chunk was asked for ran out before it arrived and the arm has held
            # since: it did not move, so the plan continues from where it stopped, at this tick. Its rows for the
            # committed ticks ran from the chunk before (or are frozen copies of them) and are skipped.
            shift = tick - first_free
            self.counters.retimed += 1
            fresh = {start + i + shift: planned.chunk[i] for i in range(request.committed, planned.chunk.shape[0])}
        else:
            fresh = {start + i: planned.chunk[i] for i in range(planned.chunk.shape[0]) if start + i >= tick}
        if self._boundary == "blend":
            for k, t in enumerate(sorted(fresh)[: self._blend_steps]):
                old = self._timeline.get(t)
                if old is not None:
                    weight = (k + 1) / (self._blend_steps + 1)
                    fresh[t] = (1.0 - weight) * old[0] + weight * fresh[t]
        for t in [t for t in self._timeline if t >= tick]:
            del self._timeline[t]
        self._timeline.update({t: (action, planned) for t, action in fresh.items()})

    def _maybe_request(self, tick: int) -> None:
        """Ask for a chunk whose first action is due at ``tick`` if fewer than enough actions are left from there
        (or a refused chunk is being replaced)."""
        if self._inference.busy or self._blocked is not None:
            return
        if self.remaining(tick) > self.request_threshold() and not self._refusals:
            return
        observation = self._observe()
        if observation is None:
            return
        committed: list[np.ndarray] = []
        while tick + len(committed) in self._timeline:
            committed.append(self._timeline[tick + len(committed)][0])
        rows = np.asarray(committed, dtype=np.float32).reshape(-1, self._action_dim)
        boundary = self.boundary
        frozen = 0
        if boundary in ("freeze", "rtc"):
            # The actions that will run while this request is computed (as many as the estimated delay) are
            # committed: the new chunk starts with them. Never the whole horizon: the chunk must add something.
            frozen = min(self.delay.ticks, rows.shape[0], self._horizon - 1)
        guide = rows[frozen:] if boundary == "rtc" else None  # rtc: guided, even with no rows after the prefix
        request = InferenceRequest(observation=observation, start_tick=tick, prefix=rows[:frozen],
                                   attempt=self._refusals, guide=guide, committed=rows.shape[0])
        self._inference.submit(request)
        self.counters.chunks_requested += 1
        if self._refusals:
            self.counters.resamples += 1


class RateLoop:
    """Fixed-rate pacing on a clock (the monotonic clock unless given); reports how late each tick started."""

    def __init__(self, rate_hz: float, clock: Clock | None = None) -> None:
        self.clock = clock if clock is not None else MonotonicClock()
        self.period_ns = int(round(1e9 / rate_hz))
        self._next_ns = self.clock.now_ns()
        self.tick = 0

    def wait(self) -> int:
        """Sleep until the next tick is due; returns its lateness in ns (0 when on time)."""
        self.clock.sleep_until_ns(self._next_ns)
        now = self.clock.now_ns()
        lateness = max(0, now - self._next_ns)
        # A tick that starts more than a whole period late is skipped rather than bunched up.
        missed = lateness // self.period_ns
        self.tick += 1 + int(missed)
        self._next_ns += self.period_ns * (1 + int(missed))
        return int(lateness)

    @property
    def next_tick_ns(self) -> int:
        """When the next tick is due (after ``wait``: when the current one ends)."""
        return self._next_ns

    def resume(self) -> None:
        """Continue on the same grid after a pause (between steps): the next tick is the first grid point not in
        the past, so no two ticks fall in one period and a long pause is not reported as lateness."""
        now = self.clock.now_ns()
        if now > self._next_ns:
            self._next_ns += -(-(now - self._next_ns) // self.period_ns) * self.period_ns

    def wait_phase(self, fraction: float) -> None:
        """Sleep until ``fraction`` of the current tick's period has passed (at once if it already has)."""
        self.clock.sleep_until_ns(self._next_ns - int(self.period_ns * (1.0 - fraction)))


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
