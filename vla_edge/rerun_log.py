"""The daemon's run in Rerun, on one timeline: what the camera showed, what the policy planned, what was sent and
what the controller did, why a chunk was refused, and what the operator answered.

`RerunLogger` is an executor observer (``on_tick``, ``on_chunk``, ``on_step_end``) and a task-event sink
(``on_task_event``). Two timelines: ``tick`` (control ticks since the logger started, across steps) and ``time``
(monotonic seconds since then). What it logs:

=============================  =====================================================================================
entity                         what
=============================  =====================================================================================
``camera``                     every distinct camera frame the control loop used (``Image``; the first view, the
                               one plans are drawn on); ``views/<name>`` the other views of a multi-view bundle
``camera/plan/samples``        the K sampled trajectories of each chunk, in image pixels (``LineStrips2D``), where
                               the action space maps onto the image (`vla_edge.plan_view`)
``camera/plan/chosen``         the chunk that is executed: green when accepted, red when refused
``robot/state``                the measured state the controller reported
``robot/action_sent``          the action sent this tick (nothing on a hold)
``robot/action_reported``      what the controller reports it actuated (``StateReport.applied``, after its filter),
``robot/measured``             the measured position (``StateReport.actual``), ``robot/holding`` whether it
                               holds (1), ``robot/hold_reason`` (text, on change) and
                               ``robot/controller_rejected`` (each command the controller refused, and why)
``robot/intervention``         1 while a human drives (take-over)
``confidence/<signal>``        each signal's value against its threshold (two series), per chunk
``chunks/verdict``             one line per chunk: accepted, or refused and why
``chunks/latency_ms``          planning latency per chunk
``task/escalations``, ``task/decisions``, ``task/checkpoints``, ``task/steps``  the task runner's events
=============================  =====================================================================================

``rerun-sdk`` is an optional extra (``pip install 'vla-edge[rerun]'``); nothing here is imported unless
``--rerun`` is given. The control thread only stamps each item (tick, time) and puts it on a bounded queue; a
thread of the logger's own converts and logs it, so Rerun's cost never lands on the tick. A full queue drops the
item and counts it (``dropped``), never blocks. Logging never raises into the control loop: a failure is logged
once and the logger turns itself off.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vla_edge.errors import VlaEdgeError
from vla_edge.plan_view import ImagePlane

if TYPE_CHECKING:  # kept out of the import so that the command line can name DEFAULT_VIEWER cheaply
    from vla_edge.scheduler import PlannedChunk, TickDecision
    from vla_edge.task import StepReport, TaskEvent
    from vla_edge.types import Frame
    from vla_edge.wire import StateReport

log = logging.getLogger(__name__)

APPLICATION_ID = "vla-edge"
DEFAULT_VIEWER = "rerun+http://127.0.0.1:9876/proxy"
ACCEPTED_RGB = (40, 200, 80)
REFUSED_RGB = (230, 40, 40)
SAMPLE_RGBA = (255, 255, 255, 110)

ENTITY_FRAMES = "camera"
ENTITY_VERDICT = "chunks/verdict"
ENTITY_ESCALATIONS = "task/escalations"
ENTITY_SENT = "robot/action_sent"


class RerunUnavailable(VlaEdgeError):
    """``--rerun`` was asked for, but the rerun-sdk extra is not installed."""


def import_rerun() -> Any:
    try:
        import rerun as rr
    except ImportError:
        raise RerunUnavailable("--rerun needs the rerun-sdk package: pip install 'vla-edge[rerun]'") from None
    return rr


def is_rrd_target(target: str) -> bool:
    return target.endswith(".rrd")


WEB_VIEWER_PORT = 9090  # ``rerun --serve-web``'s default


def web_viewer_url(address: str) -> str:
    """The page of a ``rerun --serve-web`` viewer on the host of ``address`` that shows what is logged there."""
    from urllib.parse import quote, urlsplit

    url = address if "://" in address else f"rerun+http://{address}/proxy"
    host = urlsplit(url).hostname or "127.0.0.1"
    return f"http://{host}:{WEB_VIEWER_PORT}/?url={quote(url, safe='')}"


def default_blueprint(rr: Any) -> Any:
    """The layout a run opens with: the camera and its plans, confidence against thresholds, the robot, the log."""
    rrb = rr.blueprint
    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Vertical(
                rrb.Spatial2DView(origin="camera", name="camera + plan (white: K samples; green/red: chunk)"),
                rrb.TextLogView(origin="/", contents=["chunks/verdict", "task/**", "robot/hold_reason",
                                                      "robot/controller_rejected"],
                                name="verdicts, escalations, decisions"),
                row_shares=[3, 2]),
            rrb.Vertical(
                rrb.TimeSeriesView(origin="confidence", name="confidence: value vs threshold"),
                rrb.TimeSeriesView(origin="robot", contents=["robot/action_sent", "robot/action_reported"],
                                   name="action sent / reported by the controller"),
                rrb.TimeSeriesView(origin="robot", contents=["robot/measured", "robot/holding",
                                                             "robot/intervention"],
                                   name="measured position, holding, intervention"),
            ),
            column_shares=[1, 1]),
        rrb.TimePanel(timeline="tick", play_state="following"),  # live: the newest tick; a file: its end
        collapse_panels=True,
    )


class RerunLogger:
    """Logs to one Rerun recording; build it with `to_file`, `to_viewer` or `open_target`.

    Implements `vla_edge.executor.TickObserver` (all three methods) and the task runner's event sink.
    """

    def __init__(self, recording: Any, rr: Any, *, plane: ImagePlane | None = None,
                 action_names: Sequence[str] = (), state_names: Sequence[str] = (),
                 controller: Callable[[], StateReport | None] | None = None, queue_size: int = 512) -> None:
        self.rr = rr
        self.recording = recording
        self.plane = plane
        self.controller = controller
        self._t0_ns = time.monotonic_ns()
        self._tick = 0
        self._last_frame_seq: int | None = None
        self._last_hold_reason: str | None = None
        self._named_signals: set[str] = set()
        self._last_rejected = -1
        self._failed = False
        self._closed = False
        self.frames_logged = 0
        self.chunks_logged = 0
        self.escalations_logged = 0
        self.ticks_logged = 0
        self.dropped = 0  # items the tick could not hand over because the queue was full (never blocks)
        self._static_names(action_names, state_names)
        recording.send_blueprint(default_blueprint(rr))
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=queue_size)
        self._worker = threading.Thread(target=self._drain, name="rerun-log", daemon=True)
        self._worker.start()

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def open_target(cls, target: str, **kwargs: Any) -> RerunLogger:
        """``target``: a path ending in ``.rrd`` (written as the run goes), or a viewer's gRPC address."""
        if is_rrd_target(target):
            return cls.to_file(Path(target), **kwargs)
        return cls.to_viewer(target, **kwargs)

    @classmethod
    def to_file(cls, path: Path, **kwargs: Any) -> RerunLogger:
        rr = import_rerun()
        path = Path(path)
        if not path.parent.is_dir():
            raise VlaEdgeError(f"cannot write the Rerun recording {path}: {path.parent} is not a directory")
        recording = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid4().hex)
        recording.save(str(path))
        return cls(recording, rr, **kwargs)

    @classmethod
    def to_viewer(cls, address: str, **kwargs: Any) -> RerunLogger:
        rr = import_rerun()
        url = address if "://" in address else f"rerun+http://{address}/proxy"
        recording = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid4().hex)
        recording.connect_grpc(url)
        return cls(recording, rr, **kwargs)

    def close(self, timeout_s: float = 30.0) -> None:
        """Log what is queued, flush and end the recording; later calls to the logger do nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("Rerun logging did not keep up; closing without what is still queued")
        self._worker.join(timeout=timeout_s)
        if self.dropped:
            log.warning("Rerun logging dropped %d items (its queue was full)", self.dropped)
        try:
            self.recording.flush()
            self.recording.disconnect()
        except Exception:  # closing must not fail the daemon's shutdown
            log.exception("closing the Rerun recording failed")

    # -- observer: called on the control thread; hands over to the logging thread, never blocks -------------------
    def on_tick(self, decision: TickDecision, lateness_ns: int, sent: np.ndarray | None, frame: Frame | None,
                state: np.ndarray | None, instruction: str, intervention: bool) -> None:
        if self._closed or self._failed:
            return
        self._tick += 1
        try:
            report = self.controller() if self.controller is not None else None
        except Exception:
            report = None  # what the controller said is missing from this tick's log; the tick goes on
        self._put(self._log_tick, decision.hold_reason, sent, frame, state, intervention, report)

    def on_chunk(self, planned: PlannedChunk) -> None:
        self._put(self._log_chunk, planned)

    def on_step_end(self, report: StepReport, instruction: str) -> None:
        self._put(self._log_text, "task/steps", f"{report.outcome}: {instruction}"
                  + (f" ({report.reason})" if report.reason else ""), "INFO" if report.outcome == "done" else "WARN")

    def on_task_event(self, event: TaskEvent) -> None:
        self._put(self._log_event, event)

    def _put(self, fn: Callable[..., None], *args: Any) -> None:
        if self._closed or self._failed:
            return
        try:  # stamped now: the item is logged later, at the tick and time it happened
            self._queue.put_nowait((fn, self._tick, time.monotonic_ns(), args))
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, tick, t_ns, args = item
            if self._failed:
                continue
            try:
                self.recording.set_time("tick", sequence=tick)
                self.recording.set_time("time", duration=(t_ns - self._t0_ns) / 1e9)
                fn(*args)
            except Exception:
                self._failed = True
                log.exception("Rerun logging failed; it is off for the rest of this run")

    # -- what is logged ---------------------------------------------------------------------------------------------
    def _static_names(self, action_names: Sequence[str], state_names: Sequence[str]) -> None:
        rr, rec = self.rr, self.recording
        if action_names:
            for entity in (ENTITY_SENT, "robot/action_reported", "robot/measured"):
                rec.log(entity, rr.SeriesLines(names=list(action_names)), static=True)
        if state_names:
            rec.log("robot/state", rr.SeriesLines(names=list(state_names)), static=True)

    def _log_tick(self, hold_reason: str | None, sent: np.ndarray | None, frame: Frame | None,
                  state: np.ndarray | None, intervention: bool, report: StateReport | None) -> None:
        rr, rec = self.rr, self.recording
        self.ticks_logged += 1
        if frame is not None and frame.seq != self._last_frame_seq:
            self._last_frame_seq = frame.seq
            rec.log(ENTITY_FRAMES, rr.Image(frame.image))
            if frame.views is not None and len(frame.views) > 1:  # multi-view bundles: the other views beside
                for name, image in frame.views.items():
                    if image is not frame.image:
                        rec.log(f"views/{name}", rr.Image(image))
            self.frames_logged += 1
        if state is not None:
            rec.log("robot/state", rr.Scalars(np.asarray(state, dtype=np.float64)))
        if sent is not None:
            rec.log(ENTITY_SENT, rr.Scalars(np.asarray(sent, dtype=np.float64)))
        rec.log("robot/intervention", rr.Scalars(1.0 if intervention else 0.0))
        if report is not None:
            if report.applied:  # wire v2: the command as the controller actuated it, after its filter
                rec.log("robot/action_reported", rr.Scalars(np.asarray(report.applied, dtype=np.float64)))
            rec.log("robot/measured", rr.Scalars(np.asarray(report.actual, dtype=np.float64)))
            rec.log("robot/holding", rr.Scalars(1.0 if report.holding else 0.0))
            rejected = report.seq_rejected if report.seq_rejected is not None else -1
            if rejected >= 0 and rejected != self._last_rejected:
                self._last_rejected = rejected
                rec.log("robot/controller_rejected", rr.TextLog(
                    f"controller refused command {rejected}: {report.rejected_reason}", level="WARN"))
        reason = hold_reason if sent is None and not intervention else None
        if reason != self._last_hold_reason:
            self._last_hold_reason = reason
            rec.log("robot/hold_reason", rr.TextLog(f"hold: {reason}" if reason else "moving",
                                                    level="WARN" if reason else "INFO"))

    def _log_chunk(self, planned: PlannedChunk) -> None:
        rr, rec = self.rr, self.recording
        verdict = planned.verdict
        if self.plane is not None:
            height, width = planned.request.observation.image.shape[:2]  # the frame the chunk was planned on
            samples = self.plane.pixels(planned.samples.actions, width, height)
            chosen = self.plane.pixels(planned.chunk, width, height)
            rec.log("camera/plan/samples", rr.LineStrips2D(samples, colors=[SAMPLE_RGBA], radii=0.25))
            rec.log("camera/plan/chosen", rr.LineStrips2D(
                [chosen], colors=[ACCEPTED_RGB if verdict.passed else REFUSED_RGB], radii=0.6,
                labels=["accepted" if verdict.passed else "refused"]))
        for signal in verdict.signals:
            threshold = signal.threshold if np.isfinite(signal.threshold) else np.nan
            rec.log(f"confidence/{signal.name}", rr.Scalars([float(signal.value), float(threshold)]))
        rec.log("chunks/latency_ms", rr.Scalars(float(planned.latency_ms)))
        text = "accepted" if verdict.passed else f"REFUSED: {verdict.reason}"
        rec.log(ENTITY_VERDICT, rr.TextLog(f"chunk {text} ({planned.latency_ms:.1f} ms)",
                                           level="INFO" if verdict.passed else "WARN"))
        self.chunks_logged += 1
        for signal in verdict.signals:
            if signal.name not in self._named_signals:
                self._named_signals.add(signal.name)
                rec.log(f"confidence/{signal.name}", rr.SeriesLines(
                    names=[signal.name, f"{signal.name} threshold"], widths=[2.0, 1.0]), static=True)

    def _log_event(self, event: TaskEvent) -> None:
        d = event.detail
        if event.kind == "escalated":
            self._log_text(ENTITY_ESCALATIONS, f"{d.get('escalation_kind')} at step {event.step_index}: "
                           f"{d.get('reason', '')}", "WARN")
            self.escalations_logged += 1
        elif event.kind == "decision":
            self._log_text("task/decisions", f"{d.get('operator')}: {d.get('action')} (step {event.step_index})",
                           "INFO")
        elif event.kind == "checkpoint":
            self._log_text("task/checkpoints", f"checkpoint: next step {event.step_index}", "INFO")
        elif event.kind == "step_started":
            self._log_text("task/steps", f"step {event.step_index}: {d.get('instruction')}", "INFO")

    def _log_text(self, entity: str, text: str, level: str) -> None:
        self.recording.log(entity, self.rr.TextLog(text, level=level))
