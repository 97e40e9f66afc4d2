"""The task runner: a chain of steps (instructions), checkpoints between them, escalation when a step fails.

One step at a time, ``TaskRunner.run`` asks a ``StepExecutor`` (the policy loop; the lead's executor, or a
scripted one in tests) to perform the step. Recover before asking: a step that stalls, or that an automatic check
is sure failed, is run again by the policy up to ``step_retries`` times. When the step still ends in anything but
"done" (low confidence, after the executor's own re-samples; stalled) or an automatic verification rejects it,
the arm holds and an escalation goes to the operator; the runner waits for the answer (approve / retry / take
over / abort). A scene verifier (``SceneVerifier``, e.g. the bundle's success detector) judges each step and, at a
checkpoint, the steps since the previous one from camera frames: when it is sure the scene is as expected the
checkpoint passes without the operator; when it is unsure, the operator verifies as before. No answer within ``answer_timeout_s`` keeps the hold, keeps
the escalation open, records the timeout and notifies again. Every ``checkpoint_every`` steps the task's state is
written crash-safely (``vla_edge.checkpoint``); ``run`` resumes from the newest good checkpoint of the task.

This is not a safety system: holding is a request to the controller, not an e-stop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vla_edge.checkpoint import TASK_ID_PATTERN, CheckpointStore, StepRecord, StepResolution, TaskState
from vla_edge.config import TaskSettings
from vla_edge.errors import VlaEdgeError
from vla_edge.operator.escalation import (
    Decision,
    EscalationKind,
    EscalationQueue,
    TeleopChannel,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser, published as tomli
    import tomli as tomllib

log = logging.getLogger(__name__)

StepOutcome = Literal["done", "low_confidence", "stalled", "stopped"]
TaskStatus = Literal["completed", "aborted", "stopped"]


class TaskError(VlaEdgeError):
    """A task file is invalid, or a checkpoint does not match the task it is asked to resume."""


# --------------------------------------------------------------------------------------------------- task spec


@dataclass(frozen=True)
class TaskSpec:
    """A task: an id (names its checkpoints) and the instructions of its steps, in order."""

    task_id: str
    steps: tuple[str, ...]

    @property
    def steps_sha256(self) -> str:
        return hashlib.sha256(json.dumps(list(self.steps)).encode("utf-8")).hexdigest()


class TaskFile(BaseModel):
    """A task file (TOML or JSON): ``task_id = "..."`` and ``steps = ["put the red block in the left bin", ...]``."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    steps: list[str] = Field(min_length=1, max_length=1000)

    @field_validator("steps")
    @classmethod
    def _encodable(cls, steps: list[str]) -> list[str]:
        for step in steps:
            try:
                step.encode("utf-8")  # a JSON "\udcff" escape decodes to a string no file or log can hold
            except UnicodeEncodeError:
                raise ValueError(f"step {ascii(step)} is not valid Unicode (a lone surrogate escape)") from None
        return steps

    def spec(self) -> TaskSpec:
        return TaskSpec(task_id=self.task_id, steps=tuple(self.steps))


MAX_TASK_FILE_BYTES = 1 << 20  # 1000 steps of 1000 characters fit; a larger file is refused before it is read


def load_task(path: Path) -> TaskSpec:
    """Read a ``.toml`` or ``.json`` task file. Raises TaskError naming what is wrong.

    Every way a file can be unreadable is a TaskError: I/O errors, more than MAX_TASK_FILE_BYTES, bytes that are
    not UTF-8, invalid TOML/JSON, nesting that exhausts the parser's recursion, and an invalid task.
    """
    path = Path(path)
    kind = path.suffix.lstrip(".").upper() or "JSON"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_TASK_FILE_BYTES + 1)
    except OSError as exc:
        raise TaskError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_TASK_FILE_BYTES:
        raise TaskError(f"task file {path} is larger than {MAX_TASK_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"task file {path} is not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise TaskError(f"task file {path} is not valid {kind}: {exc}") from None
    except RecursionError:
        raise TaskError(f"task file {path} is nested too deeply to be a task") from None
    try:
        task = TaskFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()[:10])
        raise TaskError(f"task file {path} is invalid: {problems}") from None
    except RecursionError:
        raise TaskError(f"task file {path} is nested too deeply to be a task") from None
    if any(not step.strip() for step in task.steps):
        raise TaskError(f"task file {path} has an empty instruction")
    return task.spec()


# ----------------------------------------------------------------------------------------- executor contract


@dataclass
class StepReport:
    """How one ``run_step``/``teleoperate`` call ended, with the evidence the operator will see."""

    outcome: StepOutcome
    frame: np.ndarray | None = None
    confidence: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    ticks: int = 0


@dataclass(frozen=True)
class Verification:
    """An automatic check of a finished step or segment (e.g. a success detector): ok, or why not.

    ``sure=False``: the checker cannot tell (a person decides); ``ok`` is then its best guess. ``p``: the checker's
    probability that the state is as expected, when it has one."""

    ok: bool
    reason: str = ""
    sure: bool = True
    p: float | None = None


class StepVerifier(Protocol):
    """Checks a step the executor reported "done"; a confident failure is retried, then escalates "verify"."""

    def __call__(self, step_index: int, instruction: str, report: StepReport) -> Verification: ...


class SceneVerifier(Protocol):
    """Judges from camera frames whether the scene is as ``instructions`` (in order) should have left it: the
    frame before the first of them and the frame now (`vla_edge.verifier.CheckpointVerifier`). Used after each
    step and, at a checkpoint, for the steps since the previous one; never sees the simulator's judge."""

    def verify(self, instructions: tuple[str, ...], before: np.ndarray | None,
               after: np.ndarray | None) -> Verification: ...


class StepExecutor(Protocol):
    """Performs steps on the robot. Implemented by the daemon's policy executor and by test executors.

    Every method leaves the arm holding when it returns anything but "done" (fail closed).
    """

    def run_step(
        self, step_index: int, instruction: str, stop: threading.Event, *, override_once: bool = False
    ) -> StepReport:
        """Run the policy on this step until it signals done, a chunk fails the confidence verdict (the arm is
        then holding; outcome "low_confidence"), the step stalls (no done within ``TaskSettings.step_timeout_s``;
        the executor owns that clock: "stalled") or ``stop`` is set ("stopped").
        ``override_once``: the operator approved the low-confidence chunk; actuate it once, then check again."""
        ...

    def teleoperate(
        self, step_index: int, instruction: str, commands: TeleopChannel, stop: threading.Event
    ) -> StepReport:
        """The operator drives from the console through ``commands``; the executor records these frames with
        ``intervention=True``. Returns "done" when the operator says done and the controller actuated it,
        "stalled" when no command was actuated for ``step_timeout_s`` (the runner escalates again), "stopped"
        when ``stop`` is set."""
        ...

    def hold(self, reason: str) -> None:
        """Ask the controller to hold the arm where it is (idempotent)."""
        ...

    def latest_frame(self) -> np.ndarray | None:
        """The newest camera frame (RGB uint8), or None when there is none."""
        ...


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class TaskEvent:
    """Something the console and telemetry want to know; ``kind`` is one of the names in ``EVENT_KINDS``."""

    kind: str
    step_index: int | None
    detail: dict[str, Any]
    t_ns: int


EVENT_KINDS = (
    "task_started",
    "resumed",
    "step_started",
    "step_report",
    "step_finished",
    "escalated",
    "answer_timeout",
    "decision",
    "checkpoint",
    "step_retry",
    "verified",
    "task_finished",
)


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    status: TaskStatus
    next_step: int
    history: tuple[StepRecord, ...]
    counters: dict[str, int]
    resumed_from: int | None
    reason: str = ""


EventSink = Callable[[TaskEvent], None]


@dataclass
class _StepEnd:
    """How resolving one step ended: finished (with how) or the task ends (aborted/stopped)."""

    status: Literal["finished", "aborted", "stopped"]
    resolution: StepResolution = "done"
    attempts: int = 0
    escalations: int = 0
    ticks: int = 0
    reason: str = ""


@dataclass
class _SegmentVerdict:
    """What the operator's answer at a checkpoint means for the loop: where to continue, or that it ends."""

    status: Literal["continue", "aborted", "stopped"]
    next_step: int
    redo_from: int | None = None
    reason: str = ""


@dataclass
class _Answer:
    """The operator's decision, or why there is none (stopped)."""

    decision: Decision | None


class TaskRunner:
    """Runs a ``TaskSpec`` step by step with checkpoints and escalation. One ``run`` at a time."""

    def __init__(
        self,
        spec: TaskSpec,
        executor: StepExecutor,
        escalations: EscalationQueue,
        store: CheckpointStore,
        settings: TaskSettings,
        *,
        answer_timeout_s: float = 120.0,
        verifier: StepVerifier | None = None,
        events: EventSink | None = None,
        teleop: TeleopChannel | None = None,
        scene_verifier: SceneVerifier | None = None,
        step_retries: int = 0,
    ) -> None:
        if not spec.steps:
            raise TaskError(f"task {spec.task_id!r} has no steps")
        self.spec = spec
        self.executor = executor
        self.escalations = escalations
        self.store = store
        self.settings = settings
        self.answer_timeout_s = answer_timeout_s
        self.verifier = verifier
        self.scene_verifier = scene_verifier
        self.step_retries = step_retries  # recovery.step_retries: autonomous re-runs before an escalation
        self.teleop = teleop if teleop is not None else TeleopChannel()
        self._segment_frame: np.ndarray | None = None  # the scene when the current segment started
        self._segment_unsure = False  # a step of this segment the automatic check could not judge
        self._events = events
        self._history: list[StepRecord] = []
        self._counters: dict[str, int] = {}

    # -- the loop ---------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> TaskResult:
        """Run (or resume) the task until it completes, the operator aborts it, or ``stop`` is set."""
        steps = self.spec.steps
        resumed = self._resume_state()
        if resumed is not None:
            self._history = list(resumed.history)
            self._counters = dict(resumed.counters)
            self._count("resumes")
            step, segment_start, pending = resumed.next_step, resumed.segment_start, resumed.pending_verification
            self._emit("resumed", step, checkpoint_next_step=step, pending_verification=pending)
        else:
            step, segment_start, pending = 0, 0, False
            self._emit("task_started", 0, steps=len(steps))
        resumed_from = resumed.next_step if resumed is not None else None
        # After a resume the frame the segment started from is unknown: its verification asks a person.
        self._segment_frame = self.executor.latest_frame() if resumed is None or segment_start == step else None

        while True:
            if pending:
                verdict = self._verify_segment(segment_start, step, stop)
                if verdict.status != "continue":
                    return self._finish(verdict.status, verdict.next_step, resumed_from, verdict.reason)
                step, pending = verdict.next_step, False
                if verdict.redo_from is None:
                    segment_start = step
                    self._segment_frame, self._segment_unsure = self.executor.latest_frame(), False
                # Persist the answer, so a crash now neither asks again nor skips a redo the operator asked for.
                self._checkpoint(step, segment_start=segment_start, pending=False)
            if step >= len(steps):
                return self._finish("completed", step, resumed_from)
            if stop.is_set():
                self.executor.hold("stop requested")
                return self._finish("stopped", step, resumed_from, "stop requested")

            end = self._resolve_step(step, stop)
            if end.status != "finished":
                return self._finish(end.status, step, resumed_from, end.reason)
            self._record(step, end)
            step += 1
            if step - segment_start >= self.settings.checkpoint_every or step == len(steps):
                pending = self.settings.verify_at_checkpoint
                self._checkpoint(step, segment_start=segment_start, pending=pending)
                if not pending:
                    segment_start = step
                    self._segment_frame, self._segment_unsure = self.executor.latest_frame(), False

    def _resume_state(self) -> TaskState | None:
        state = self.store.load_latest(self.spec.task_id)
        if state is None:
            return None
        if state.steps_sha256 != self.spec.steps_sha256:
            raise TaskError(
                f"the checkpoint of task {self.spec.task_id!r} was written for different instructions; "
                f"give the changed task a new task_id, or remove {self.store.directory / self.spec.task_id} "
                "to start it over"
            )
        if state.next_step > len(self.spec.steps):
            raise TaskError(f"checkpoint of task {self.spec.task_id!r} points past its last step")
        return state

    # -- one step -----------------------------------------------------------------------------------------------

    def _resolve_step(self, step: int, stop: threading.Event) -> _StepEnd:
        """Run one step until it is finished (by the policy, or the operator), aborted or stopped.

        A step that ends without the expected result (stalled, or an automatic check that is sure it failed) is
        run again by the policy up to ``step_retries`` times before the operator is asked."""
        instruction = self.spec.steps[step]
        end = _StepEnd(status="finished")
        override = False
        retries_left = self.step_retries
        stalled_takeover: StepReport | None = None  # a take-over that made no progress: ask the operator again
        self._emit("step_started", step, instruction=instruction)
        while True:
            if stop.is_set():
                self.executor.hold("stop requested")
                return _StepEnd(status="stopped", reason="stop requested")
            if stalled_takeover is not None:
                report, stalled_takeover = stalled_takeover, None
            else:
                end.attempts += 1
                self._count("attempts")
                before = self.executor.latest_frame()
                report = self.executor.run_step(step, instruction, stop, override_once=override)
            override = False
            end.ticks += report.ticks
            self._emit(
                "step_report", step, outcome=report.outcome, confidence=dict(report.confidence), reason=report.reason
            )
            if report.outcome == "stopped":
                self.executor.hold("stop requested")
                return _StepEnd(status="stopped", reason="stop requested")

            kind: EscalationKind
            if report.outcome == "done":
                verification = self._check_step(step, instruction, report, before)
                if verification.ok and verification.sure:
                    return end
                if verification.sure:
                    kind, reason, retry = "verify", verification.reason or "the automatic check rejected the step", True
                else:
                    self._count("verifier_unsure")
                    if self.settings.verify_at_checkpoint:
                        self._segment_unsure = True  # the checkpoint asks a person about this segment
                        return end
                    kind, reason, retry = "verify", verification.reason or "the automatic check cannot tell", False
                self._count("verify_failed")
            else:
                kind, reason = report.outcome, report.reason or report.outcome.replace("_", " ")
                retry = kind == "stalled"
                self._count(kind)

            if retry and retries_left > 0:
                # Recover before asking: the policy tries the step again from where the arm is now.
                retries_left -= 1
                self._count("autonomous_retries")
                self._emit("step_retry", step, after=kind, reason=reason, retries_left=retries_left)
                continue

            self.executor.hold(f"{kind}: {reason}")
            end.escalations += 1
            frame = report.frame if report.frame is not None else self.executor.latest_frame()
            answer = self._ask(kind, step, instruction, frame, report.confidence, reason, (step,), stop)
            if answer.decision is None:
                return _StepEnd(status="stopped", reason="stop requested while waiting for the operator")
            action = answer.decision.action
            if action == "abort":
                self.executor.hold("aborted by the operator")
                return _StepEnd(status="aborted", reason=f"aborted by {answer.decision.operator} at step {step}")
            if action == "takeover":
                teleop = self._teleoperate(step, instruction, stop)
                end.ticks += teleop.ticks
                if teleop.outcome == "stalled":
                    stalled_takeover = teleop  # escalates again (e.g. the controller was lost during it)
                    continue
                if teleop.outcome != "done":
                    self.executor.hold("stop requested")
                    return _StepEnd(status="stopped", reason="stop requested during take-over")
                end.resolution = "teleoperated"
                return end
            if action == "approve":
                if kind == "verify":
                    end.resolution = "approved"
                    return end
                # Low confidence: actuate the chunk the operator saw, once. Stalled: give the step more time.
                override = kind == "low_confidence"
            # "retry", and "approve" for a stalled step: run the step again from the arm's current state.

    def _check_step(self, step: int, instruction: str, report: StepReport, before: np.ndarray | None) -> Verification:
        if self.verifier is not None:
            return self.verifier(step, instruction, report)
        if self.scene_verifier is None:
            return Verification(True)
        after = report.frame if report.frame is not None else self.executor.latest_frame()
        verification = self.scene_verifier.verify((instruction,), before, after)
        self._emit("verified", step, scope="step", ok=verification.ok, sure=verification.sure, p=verification.p,
                   reason=verification.reason)
        return verification

    def _teleoperate(self, step: int, instruction: str, stop: threading.Event) -> StepReport:
        self._count("takeovers")
        self.teleop.begin(step)
        try:
            return self.executor.teleoperate(step, instruction, self.teleop, stop)
        finally:
            self.teleop.end()

    # -- checkpoints and operator verification --------------------------------------------------------------------

    def _verify_segment(self, segment_start: int, next_step: int, stop: threading.Event) -> _SegmentVerdict:
        """Ask the operator to verify the steps since the previous checkpoint; act on the answer.

        approve: continue at ``next_step``. retry: redo from the step the operator picked (default: the last one),
        the steps after it are run again too. takeover: the operator drives the picked step, then is asked to
        verify the segment again (another step may need fixing too; the others are not re-run). abort: the task
        ends.
        """
        covered = tuple(range(segment_start, next_step))
        if not covered:
            return _SegmentVerdict("continue", next_step)  # nothing ran since the previous checkpoint
        last = next_step - 1
        verdict = _SegmentVerdict
        if self._verified_automatically(covered):
            return verdict("continue", next_step)
        while True:
            self.executor.hold("checkpoint: waiting for the operator to verify")
            answer = self._ask(
                "verify",
                last,
                self.spec.steps[last],
                self.executor.latest_frame(),
                {},
                f"checkpoint after step {last}: verify steps {covered[0]}–{covered[-1]}",
                covered,
                stop,
            )
            if answer.decision is None:
                return verdict("stopped", next_step, reason="stop requested while waiting for verification")
            decision = answer.decision
            chosen = decision.step_index if decision.step_index is not None else last
            if decision.action == "approve":
                return verdict("continue", next_step)
            if decision.action == "abort":
                self.executor.hold("aborted by the operator")
                return verdict("aborted", next_step, reason=f"aborted by {decision.operator} at verification")
            if decision.action == "retry":
                self._count("redo_requests")
                return verdict("continue", chosen, redo_from=chosen)
            teleop = self._teleoperate(chosen, self.spec.steps[chosen], stop)
            if teleop.outcome == "stalled":
                continue  # the take-over made no progress: the operator is asked to verify the segment again
            if teleop.outcome != "done":
                self.executor.hold("stop requested")
                return verdict("stopped", next_step, reason="stop requested during take-over")
            self._record(chosen, _StepEnd(status="finished", resolution="teleoperated", attempts=1,
                                          ticks=teleop.ticks))

    def _verified_automatically(self, covered: tuple[int, ...]) -> bool:
        """The scene verifier approves the segment by itself only when it is sure the scene is as the segment's
        instructions should have left it, and no step of the segment was one it could not judge."""
        if self.scene_verifier is None or self._segment_unsure or self._segment_frame is None:
            return False
        instructions = tuple(self.spec.steps[i] for i in covered)
        verification = self.scene_verifier.verify(instructions, self._segment_frame, self.executor.latest_frame())
        approved = verification.ok and verification.sure
        self._emit("verified", covered[-1], scope="checkpoint", steps=list(covered), ok=verification.ok,
                   sure=verification.sure, p=verification.p, reason=verification.reason)
        if approved:
            self._count("verified_automatically")
        return approved

    def _checkpoint(self, next_step: int, *, segment_start: int, pending: bool) -> None:
        self._count("checkpoints")
        state = TaskState(
            task_id=self.spec.task_id,
            steps_sha256=self.spec.steps_sha256,
            next_step=next_step,
            pending_verification=pending,
            segment_start=segment_start,
            history=tuple(self._history),
            counters=dict(self._counters),
        )
        path = self.store.save(state)
        self._emit("checkpoint", next_step, path=str(path), pending_verification=pending)

    # -- asking the operator --------------------------------------------------------------------------------------

    def _ask(
        self,
        kind: EscalationKind,
        step: int,
        instruction: str,
        frame: np.ndarray | None,
        confidence: dict[str, float],
        reason: str,
        covered: tuple[int, ...],
        stop: threading.Event,
    ) -> _Answer:
        """Raise an escalation and wait for its answer; an answer timeout keeps the hold and asks again."""
        self._count("escalations")
        escalation = self.escalations.raise_escalation(
            kind, step, instruction, frame=frame, confidence=confidence, reason=reason, steps=covered
        )
        self._emit("escalated", step, escalation_id=escalation.id, escalation_kind=kind, reason=reason)
        while True:
            decision = self.escalations.wait_decision(escalation.id, self.answer_timeout_s, stop)
            if decision is not None:
                self._count(f"decision_{decision.action}")
                self._emit(
                    "decision",
                    step,
                    escalation_id=escalation.id,
                    action=decision.action,
                    chosen_step=decision.step_index,
                    operator=decision.operator,
                )
                return _Answer(decision)
            if stop.is_set():
                self.executor.hold("stop requested")
                self.escalations.withdraw(escalation.id, "the task was stopped before an answer came")
                return _Answer(None)
            # Silence is an answer too: keep holding, keep the question open, say so again.
            self._count("answer_timeouts")
            times = self.escalations.note_answer_timeout(escalation.id)
            self.executor.hold(f"{kind}: no operator answer after {times * self.answer_timeout_s:.0f} s")
            self._emit("answer_timeout", step, escalation_id=escalation.id, times=times)

    # -- bookkeeping ------------------------------------------------------------------------------------------------

    def _record(self, step: int, end: _StepEnd) -> None:
        record = StepRecord(
            step_index=step,
            instruction=self.spec.steps[step],
            resolution=end.resolution,
            attempts=max(1, end.attempts),
            escalations=end.escalations,
            ticks=end.ticks,
            finished_at=time.time(),
        )
        self._history.append(record)
        self._count("steps_finished")
        self._emit("step_finished", step, resolution=end.resolution, attempts=record.attempts)

    def _finish(self, status: TaskStatus, next_step: int, resumed_from: int | None, reason: str = "") -> TaskResult:
        if status != "completed":
            self.executor.hold(reason or status)
        self._emit("task_finished", next_step, status=status, reason=reason)
        return TaskResult(
            task_id=self.spec.task_id,
            status=status,
            next_step=next_step,
            history=tuple(self._history),
            counters=dict(self._counters),
            resumed_from=resumed_from,
            reason=reason,
        )

    def _count(self, name: str) -> None:
        self._counters[name] = self._counters.get(name, 0) + 1

    def _emit(self, kind: str, step: int | None, **detail: Any) -> None:
        if self._events is None:
            return
        try:
            self._events(TaskEvent(kind=kind, step_index=step, detail=detail, t_ns=time.monotonic_ns()))
        except Exception:
            # A broken console or telemetry sink must never stop the task or leave the arm moving.
            log.exception("task event sink failed on %s", kind)
