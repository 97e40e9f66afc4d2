"""Escalations to the operator and their answers: typed messages, a bounded thread-safe queue, a teleop slot.

The task runner raises an escalation while the arm holds and blocks on ``wait_decision``; the console (another
thread) lists open escalations and calls ``decide``. Every message that crosses the HTTP boundary is one of the
pydantic models below (``v`` is the schema version). Nothing here knows about HTTP or the policy.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vla_edge.errors import VlaEdgeError

SCHEMA_VERSION = 1

EscalationKind = Literal["low_confidence", "verify", "stalled"]
DecisionAction = Literal["approve", "retry", "takeover", "abort"]
EscalationStatus = Literal["open", "decided", "withdrawn"]

# The step the operator may ask the runner to redo must be one the escalation covers; bounded anyway so a
# malformed request can never become a huge allocation or an absurd index.
MAX_STEP_INDEX = 10_000
# Keyboard/on-screen teleop moves the gripper target by at most this much per command (workspace units).
MAX_TELEOP_DELTA = 0.1


class EscalationError(VlaEdgeError):
    """An operator answer that cannot be applied (unknown escalation, already answered, bad step)."""


class UnknownEscalation(EscalationError):
    pass


class EscalationClosed(EscalationError):
    pass


class QueueFull(EscalationError):
    pass


class Message(BaseModel):
    """Base for boundary messages: unknown fields and NaN/inf are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Escalation(Message):
    """A question to the operator, raised while the arm holds."""

    v: Literal[1] = SCHEMA_VERSION
    id: str
    kind: EscalationKind
    step_index: int = Field(ge=0, le=MAX_STEP_INDEX)
    instruction: str
    steps: tuple[int, ...] = Field(description="Steps this escalation covers; a retry/take-over may pick one.")
    frame_jpeg_b64: str | None = Field(None, description="The camera frame when it was raised (JPEG, base64).")
    confidence: dict[str, float] = Field(default_factory=dict)
    reason: str = ""
    created_at: float = Field(description="Wall-clock seconds (for display and logs only).")


class Decision(Message):
    """The operator's answer to one escalation."""

    v: Literal[1] = SCHEMA_VERSION
    escalation_id: str = Field(min_length=1, max_length=64)
    action: DecisionAction
    step_index: int | None = Field(
        None, ge=0, le=MAX_STEP_INDEX, description="Retry/take over this step; default: the escalation's step."
    )
    operator: str = Field("operator", min_length=1, max_length=64)


class TeleopCommand(Message):
    """One take-over input: a small move of the gripper target, the grip state, and 'this step is done'."""

    v: Literal[1] = SCHEMA_VERSION
    dx: float = Field(0.0, ge=-MAX_TELEOP_DELTA, le=MAX_TELEOP_DELTA)
    dy: float = Field(0.0, ge=-MAX_TELEOP_DELTA, le=MAX_TELEOP_DELTA)
    grip: float | None = Field(None, ge=0.0, le=1.0, description="None keeps the current grip.")
    done: bool = False


class HistoryEntry(Message):
    """One escalation's life: what was asked, how it was answered, how many answer timeouts it sat through."""

    v: Literal[1] = SCHEMA_VERSION
    escalation_id: str
    kind: EscalationKind
    step_index: int
    instruction: str
    reason: str
    status: EscalationStatus
    created_at: float
    decided_at: float | None = None
    action: DecisionAction | None = None
    chosen_step: int | None = None
    operator: str | None = None
    answer_timeouts: int = 0
    note: str = ""


def encode_jpeg_b64(frame: np.ndarray | None, quality: int = 85) -> str | None:
    """An RGB uint8 frame as base64 JPEG text (what the console shows); None stays None."""
    if frame is None:
        return None
    image = np.asarray(frame)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an RGB uint8 image, got dtype {image.dtype} shape {image.shape}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the frame as JPEG")
    return base64.b64encode(buffer.tobytes()).decode("ascii")


@dataclass
class _Record:
    escalation: Escalation
    status: EscalationStatus = "open"
    decision: Decision | None = None
    decided_at: float | None = None
    answer_timeouts: int = 0
    note: str = ""

    def entry(self) -> HistoryEntry:
        e = self.escalation
        d = self.decision
        return HistoryEntry(
            escalation_id=e.id,
            kind=e.kind,
            step_index=e.step_index,
            instruction=e.instruction,
            reason=e.reason,
            status=self.status,
            created_at=e.created_at,
            decided_at=self.decided_at,
            action=d.action if d else None,
            chosen_step=(d.step_index if d and d.step_index is not None else e.step_index) if d else None,
            operator=d.operator if d else None,
            answer_timeouts=self.answer_timeouts,
            note=self.note,
        )


class EscalationQueue:
    """Open escalations (bounded) and a bounded history; safe to use from the runner and the web server threads.

    ``revision`` grows on every change so a poller can tell cheaply whether anything happened.
    """

    def __init__(
        self, max_open: int = 16, max_history: int = 256, *, while_waiting: Callable[[], None] | None = None
    ) -> None:
        # Called on every wake-up of wait_decision: the daemon tells systemd's watchdog that the thread
        # holding the arm is alive while it waits (possibly minutes) for a human.
        self._while_waiting = while_waiting
        self._max_open = max_open
        self._changed = threading.Condition()
        self._open: dict[str, _Record] = {}
        self._closed: deque[_Record] = deque(maxlen=max_history)
        self._revision = 0

    @property
    def revision(self) -> int:
        with self._changed:
            return self._revision

    def raise_escalation(
        self,
        kind: EscalationKind,
        step_index: int,
        instruction: str,
        *,
        frame: np.ndarray | None = None,
        confidence: dict[str, float] | None = None,
        reason: str = "",
        steps: tuple[int, ...] | None = None,
    ) -> Escalation:
        escalation = Escalation(
            id=uuid.uuid4().hex[:16],
            kind=kind,
            step_index=step_index,
            instruction=instruction,
            steps=steps if steps else (step_index,),
            frame_jpeg_b64=encode_jpeg_b64(frame),
            confidence={k: float(v) for k, v in (confidence or {}).items() if np.isfinite(v)},
            reason=reason,
            created_at=time.time(),
        )
        with self._changed:
            if len(self._open) >= self._max_open:
                raise QueueFull(
                    f"{len(self._open)} escalations are already open; answer them in the operator console first"
                )
            self._open[escalation.id] = _Record(escalation)
            self._bump()
        return escalation

    def decide(self, decision: Decision) -> Escalation:
        """Apply the operator's answer. Raises UnknownEscalation, EscalationClosed or EscalationError."""
        with self._changed:
            record = self._open.get(decision.escalation_id)
            if record is None:
                if any(r.escalation.id == decision.escalation_id for r in self._closed):
                    raise EscalationClosed(f"escalation {decision.escalation_id} was already answered or withdrawn")
                raise UnknownEscalation(f"no escalation with id {decision.escalation_id!r}")
            steps = record.escalation.steps
            if decision.step_index is not None and decision.step_index not in steps:
                raise EscalationError(
                    f"step {decision.step_index} is not one this escalation covers; choose one of {list(steps)}"
                )
            record.decision = decision
            record.status = "decided"
            record.decided_at = time.time()
            del self._open[decision.escalation_id]
            self._closed.append(record)
            self._bump()
            return record.escalation

    def wait_decision(
        self, escalation_id: str, timeout: float, stop: threading.Event | None = None
    ) -> Decision | None:
        """Block until the operator answers, ``timeout`` seconds pass or ``stop`` is set; None unless answered."""
        deadline = time.monotonic_ns() + int(timeout * 1e9)
        with self._changed:
            while True:
                decision = self._decision_locked(escalation_id)
                if decision is not None:
                    return decision
                left = (deadline - time.monotonic_ns()) / 1e9
                if left <= 0 or (stop is not None and stop.is_set()):
                    return None
                # Wake at least every 0.1 s to notice ``stop``, which does not notify this condition.
                self._changed.wait(min(left, 0.1))
                if self._while_waiting is not None:
                    self._while_waiting()

    def note_answer_timeout(self, escalation_id: str) -> int:
        """Record that an answer timeout passed with the escalation still open; returns how many so far."""
        with self._changed:
            record = self._open.get(escalation_id)
            if record is None:
                return 0
            record.answer_timeouts += 1
            self._bump()
            return record.answer_timeouts

    def withdraw(self, escalation_id: str, note: str) -> None:
        """Close an escalation nobody answered because the question no longer stands (e.g. the task stopped)."""
        with self._changed:
            record = self._open.pop(escalation_id, None)
            if record is None:
                return
            record.status = "withdrawn"
            record.note = note
            self._closed.append(record)
            self._bump()

    def get(self, escalation_id: str) -> Escalation | None:
        with self._changed:
            record = self._open.get(escalation_id)
            if record is None:
                record = next((r for r in self._closed if r.escalation.id == escalation_id), None)
            return record.escalation if record else None

    def open(self) -> list[Escalation]:
        """Open escalations, oldest first."""
        with self._changed:
            return [r.escalation for r in self._open.values()]

    def history(self) -> list[HistoryEntry]:
        """Every escalation still remembered, oldest first: the closed ones, then the open ones."""
        with self._changed:
            return [r.entry() for r in self._closed] + [r.entry() for r in self._open.values()]

    def _decision_locked(self, escalation_id: str) -> Decision | None:
        if escalation_id in self._open:
            return None
        for record in reversed(self._closed):
            if record.escalation.id == escalation_id:
                return record.decision
        raise UnknownEscalation(f"no escalation with id {escalation_id!r}")

    def _bump(self) -> None:
        self._revision += 1
        self._changed.notify_all()


@dataclass(frozen=True)
class TeleopInput:
    """What the executor takes from the channel in one tick: accumulated move, newest grip, done."""

    dx: float
    dy: float
    grip: float | None
    done: bool


class TeleopChannel:
    """A size-1 slot between the console (writer) and the executor (reader) during a take-over.

    Moves accumulate until taken (clipped to one command's bound) so key presses between two control ticks are
    not lost; grip is newest-wins; ``done`` latches until ``begin`` starts the next take-over. Commands are
    refused while no take-over is active, so a stray key press can never move the arm later.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: TeleopInput | None = None
        self._active_step: int | None = None
        self._done = threading.Event()
        self._received = 0

    def begin(self, step_index: int) -> None:
        with self._lock:
            self._pending = None
            self._active_step = step_index
            self._done.clear()

    def end(self) -> None:
        with self._lock:
            self._pending = None
            self._active_step = None

    @property
    def active_step(self) -> int | None:
        with self._lock:
            return self._active_step

    @property
    def received(self) -> int:
        """Commands accepted since this channel was made (for tests and telemetry)."""
        with self._lock:
            return self._received

    def put(self, command: TeleopCommand) -> bool:
        """Offer a command; False (ignored) when no take-over is active."""
        with self._lock:
            if self._active_step is None:
                return False
            previous = self._pending
            dx = command.dx + (previous.dx if previous else 0.0)
            dy = command.dy + (previous.dy if previous else 0.0)
            grip = command.grip if command.grip is not None else (previous.grip if previous else None)
            self._pending = TeleopInput(
                dx=float(np.clip(dx, -MAX_TELEOP_DELTA, MAX_TELEOP_DELTA)),
                dy=float(np.clip(dy, -MAX_TELEOP_DELTA, MAX_TELEOP_DELTA)),
                grip=grip,
                done=command.done or (previous.done if previous else False),
            )
            self._received += 1
            if command.done:
                self._done.set()
            return True

    def take(self) -> TeleopInput | None:
        """The input gathered since the last take (None when there is none); never blocks."""
        with self._lock:
            pending, self._pending = self._pending, None
            return pending

    def wait_input(self, timeout: float) -> TeleopInput | None:
        """Take, waiting up to ``timeout`` seconds for something to arrive (polls; inputs are human-rate)."""
        deadline = time.monotonic_ns() + int(timeout * 1e9)
        while True:
            got = self.take()
            if got is not None or time.monotonic_ns() >= deadline:
                return got
            time.sleep(0.01)

    @property
    def done(self) -> bool:
        return self._done.is_set()
