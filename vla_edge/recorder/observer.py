"""The daemon's ticks as dataset frames: each frame's ``action`` is the command the motors were given.

At every control tick the executor reports what it saw and sent (`TickObserver.on_tick`). The frame taken at
tick t records, as LeRobot datasets do, the observation at t and the command the motors were given for the
period that follows: the command sent at t if the controller executed it, otherwise (a hold tick, or a command
the controller rejected: late, out of limits, too fast) the last command it did execute, which is what holding
keeps. Which commands ran, and with which values (``applied``, wire v2; a v1 controller actuates the values
sent or nothing), is known only from the controller's state reports (``seq_applied``; see
`vla_edge.stream.ActionStream.applied_since`), so a frame is written ``resolve_after_ticks`` ticks later, or at
the end of the step after waiting (bounded) for the report of its last command. A command the controller
rejected is therefore never recorded as executed. Frames before the controller executed anything (nothing to
record as the action) are not recorded.

``actual`` is the controller's report right after it executed the frame's command (for a held frame: the
newest report when the frame is written). ``observation.state`` is the measured state the executor planned
from at t. Training uses ``action`` as the target and ``observation.state`` (and the views) as inputs.

Recording never stops the robot: a frame or episode the recorder cannot write (disk full, a report of the
wrong size) is logged and dropped, and the episode in progress discarded.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vla_edge.executor import TickObserver
from vla_edge.recorder.episodes import EpisodeRecorder
from vla_edge.recorder.features import DEFAULT_VIEW, CameraView, RecorderError, RecordingFeatures

log = logging.getLogger(__name__)


class CommandLog(Protocol):
    """What the recorder needs from the action stream (`vla_edge.stream.ActionStream`)."""

    def last_action(self): ...

    def applied_since(self, seq: int) -> list: ...

    def latest_state(self): ...


@dataclass
class _Frame:
    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str
    intervention: bool
    command: int | None  # the newest action sent by this tick (its sequence number)
    tick: int


class RecordingObserver(TickObserver):
    """One dataset episode per step attempt; frames written once the controller has said what it executed."""

    def __init__(
        self,
        recorder: EpisodeRecorder,
        commands: CommandLog,
        view_of: Callable[[object], dict[str, np.ndarray]],
        *,
        control_period_s: float,
        resolve_after_ticks: int = 2,
        end_wait_ticks: int = 3,
    ) -> None:
        self.recorder = recorder
        self.commands = commands
        self.view_of = view_of  # Frame -> {view key: image}
        self.resolve_after_ticks = resolve_after_ticks
        self.end_wait_s = end_wait_ticks * control_period_s
        self.frames_without_command = 0
        self.frames_held = 0  # frames whose command was not executed (hold ticks and rejections)
        self.failures = 0
        self._broken = False  # the episode in progress lost a frame: it is discarded at its end
        self._sent: dict[int, np.ndarray] = {}
        self._executed: dict[int, object] = {}  # seq -> the stream's AppliedCommand (actual, applied values)
        self._pending: deque[_Frame] = deque()
        self._ticks = 0

    # -- TickObserver ------------------------------------------------------------------------------------------

    def on_tick(self, decision, lateness_ns, sent, frame, state, instruction, intervention) -> None:
        self._ticks += 1
        last = self.commands.last_action()
        if sent is not None and last is not None:
            self._sent[last.seq] = np.asarray(last.values, dtype=np.float32)
        if frame is not None and state is not None:
            self._pending.append(_Frame(self.view_of(frame), np.asarray(state, np.float32), instruction,
                                        bool(intervention), last.seq if last is not None else None, self._ticks))
        self._learn()
        while self._pending and self._ticks - self._pending[0].tick >= self.resolve_after_ticks:
            self._write(self._pending.popleft())

    def on_step_end(self, report, instruction: str) -> None:
        if self._pending:
            last = self._pending[-1].command
            deadline = time.monotonic() + self.end_wait_s
            # The step's last command (e.g. the one that said done) was sent this tick: wait for its report.
            while last is not None and last not in self._executed and time.monotonic() < deadline:
                time.sleep(0.005)
                self._learn()
        while self._pending:
            self._write(self._pending.popleft())
        if self._broken:
            self.recorder.discard_episode()
        else:
            self._guard(lambda: self.recorder.end_episode(success=report.outcome == "done"))
        self._broken = False
        self._forget()

    # -- internals ---------------------------------------------------------------------------------------------

    def _learn(self) -> None:
        oldest = min((f.command for f in self._pending if f.command is not None), default=None)
        since = min(oldest, max(self._executed, default=oldest)) if oldest is not None else 0
        for applied in self.commands.applied_since(since):
            self._executed.setdefault(applied.seq, applied)

    def _write(self, frame: _Frame) -> None:
        command = frame.command
        executed = [seq for seq in self._executed if command is not None and seq <= command]
        if not executed:
            self.frames_without_command += 1
            return
        ran = max(executed)
        applied = self._executed[ran]
        # The values as the controller reports it actuated them (wire v2), else as sent (a v1 controller
        # actuates a command's values unchanged or not at all).
        values = np.asarray(applied.applied, np.float32) if applied.applied else self._sent.get(ran)
        if values is None:  # executed before this observer saw it sent (not ours to describe)
            self.frames_without_command += 1
            return
        if ran == command:
            actual = applied.actual
        else:
            self.frames_held += 1
            report = self.commands.latest_state()
            actual = tuple(report.actual) if report is not None else applied.actual
        if self._broken:
            return
        recorded_actual = np.asarray(actual, np.float32) if self.recorder.features.actual_names else None
        self._guard(lambda: self.recorder.add_frame(frame.images, frame.state, values, frame.intervention,
                                                    frame.instruction, actual=recorded_actual))

    def _guard(self, write: Callable[[], object]) -> None:
        try:
            write()
        except Exception as exc:  # recording must never stop the control loop
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.error("recorder: %s; the episode in progress is dropped (failure %d)", exc, self.failures)
            self._broken = True
            self.recorder.discard_episode()

    def _forget(self) -> None:
        """Keep only the newest executed command and its values: what a hold at the next step keeps."""
        if self._executed:
            newest = max(self._executed)
            self._executed = {newest: self._executed[newest]}
            self._sent = {k: v for k, v in self._sent.items() if k >= newest}


def view_key(name: str) -> str:
    """The dataset key of a bundle's camera view: ``image`` ↔ ``observation.image`` (LeRobot's one-camera key),
    any other name ↔ ``observation.images.<name>`` (what ``vla-edge import lerobot`` names views after)."""
    return DEFAULT_VIEW if name == "image" else f"observation.images.{name}"


def recording_features(settings, manifest) -> RecordingFeatures:
    """What the daemon records, from its settings and the bundle (schema 2): one video per camera view the bundle
    reads, at the size the policy sees it; the bundle's action and state names (``recorder.state_names``
    overrides the latter: a schema-1 bundle names its state ``state_0``…); ``actual`` named
    ``recorder.actual_names`` or after the actions (a controller reports one measured value per commanded
    dimension, docs/wire.md); the instruction words when ``recorder.instruction_words`` is set."""
    r = settings.recorder
    action_names = tuple(manifest.action_names)
    state_names = tuple(r.state_names or manifest.state_names)
    if len(state_names) != manifest.state_dim:
        raise RecorderError(f"recorder.state_names has {len(state_names)} names; the bundle's state has "
                            f"{manifest.state_dim}")
    if r.actual_names and len(r.actual_names) != len(action_names):
        raise RecorderError(f"recorder.actual_names has {len(r.actual_names)} names; the controller reports one "
                            f"value per action dimension ({len(action_names)})")
    return RecordingFeatures(
        views=tuple(CameraView(view_key(c.name), c.height, c.width) for c in manifest.observation.cameras),
        state_names=state_names,
        action_names=action_names,
        actual_names=tuple(r.actual_names) if r.actual_names else action_names,
        instruction_words=tuple(r.instruction_words) if r.instruction_words else None,
    )


def frame_views(manifest) -> Callable[[object], dict[str, np.ndarray]]:
    """Frame → {dataset key: image at the bundle's size for that view} (the camera keeps its own resolution)."""
    cameras = [(c.name, view_key(c.name), (c.width, c.height)) for c in manifest.observation.cameras]

    def views_of(frame) -> dict[str, np.ndarray]:
        by_name = frame.views if frame.views is not None else {cameras[0][0]: frame.image}
        images = {}
        for name, key, size in cameras:
            image = by_name[name]
            if (image.shape[1], image.shape[0]) != size:
                import cv2

                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            images[key] = image
        return images

    return views_of


def build_recording(settings, manifest, commands: CommandLog) -> RecordingObserver:
    """The daemon's recorder (`recorder.*` settings) as a tick observer on ``commands`` (the action stream)."""
    r = settings.recorder
    features = recording_features(settings, manifest)
    recorder = EpisodeRecorder(r.dataset_dir, r.fps, features, codec=r.video_codec, dataset_format=r.dataset_format,
                               data_file_mb=r.data_file_mb, video_file_mb=r.video_file_mb)
    rate = settings.scheduler.control_rate_hz or manifest.control_rate_hz
    return RecordingObserver(recorder, commands, frame_views(manifest), control_period_s=1.0 / rate)
