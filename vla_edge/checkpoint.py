"""Crash-safe task checkpoints: write to a temp file, fsync it, rename over, fsync the directory.

A checkpoint is JSON with a sha256 of its own content inside, so a file cut short by a crash (or damaged on
disk) is detected on load and the previous good one is used instead. The last ``keep`` files per task are kept.
Layout: ``<dir>/<task_id>/ckpt-<seq:08d>.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vla_edge.errors import VlaEdgeError

log = logging.getLogger(__name__)

TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_FILE_PATTERN = re.compile(r"^ckpt-(\d{8})\.json$")

StepResolution = Literal["done", "teleoperated", "approved"]


class CheckpointError(VlaEdgeError):
    """The checkpoint directory cannot be used (not writable, not a directory)."""


class StepRecord(BaseModel):
    """How one step of a task ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_index: int = Field(ge=0)
    instruction: str
    resolution: StepResolution = Field(
        description="done: the policy finished it; teleoperated: the operator drove it; "
        "approved: the operator accepted it after a failed automatic verification."
    )
    attempts: int = Field(ge=1)
    escalations: int = Field(ge=0)
    ticks: int = Field(ge=0)
    finished_at: float = Field(description="Wall-clock seconds.")


class TaskState(BaseModel):
    """What a checkpoint holds: enough to resume the task at ``next_step`` after a crash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    steps_sha256: str = Field(description="Hash of the task's instructions, so a changed task file is noticed.")
    next_step: int = Field(ge=0)
    pending_verification: bool = Field(
        False, description="The operator had not yet verified the steps before next_step when this was written."
    )
    segment_start: int = Field(0, ge=0, description="First step since the previous checkpoint.")
    history: tuple[StepRecord, ...] = ()
    counters: dict[str, int] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time, description="Wall-clock seconds.")
    checksum: str = ""


def state_checksum(state: TaskState) -> str:
    """sha256 of the state's canonical JSON with the checksum field blanked."""
    body = state.model_dump(mode="json")
    body["checksum"] = ""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class CheckpointStore:
    """Saves and loads ``TaskState`` atomically under one directory."""

    def __init__(self, directory: Path, keep: int = 5) -> None:
        if keep < 2:
            raise ValueError("keep at least 2 checkpoints, so a damaged newest one has a fallback")
        self.directory = Path(directory)
        self.keep = keep

    def save(self, state: TaskState) -> Path:
        """Write ``state`` (its checksum filled in) as the task's newest checkpoint; returns the file's path."""
        task_dir = self._task_dir(state.task_id)
        try:
            task_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint directory {task_dir}: {exc}") from None
        sealed = state.model_copy(update={"checksum": ""})
        sealed = sealed.model_copy(update={"checksum": state_checksum(sealed)})
        payload = sealed.model_dump_json(indent=1).encode("utf-8")
        sequence = max((seq for seq, _ in self._files(task_dir)), default=0) + 1
        target = task_dir / f"ckpt-{sequence:08d}.json"
        fd, tmp_name = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=task_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_directory(task_dir)
        self._prune(task_dir)
        return target

    def load_latest(self, task_id: str) -> TaskState | None:
        """The newest checkpoint of ``task_id`` whose checksum holds; damaged files are skipped (and logged)."""
        task_dir = self._task_dir(task_id)
        if not task_dir.is_dir():
            return None
        for _, path in sorted(self._files(task_dir), reverse=True):
            state = self._read_valid(path, task_id)
            if state is not None:
                return state
        return None

    def paths(self, task_id: str) -> list[Path]:
        """The task's checkpoint files, oldest first."""
        task_dir = self._task_dir(task_id)
        return [path for _, path in sorted(self._files(task_dir))] if task_dir.is_dir() else []

    def _read_valid(self, path: Path, task_id: str) -> TaskState | None:
        try:
            state = TaskState.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            log.warning("skipping unreadable checkpoint %s: %s", path, str(exc).splitlines()[0])
            return None
        if state.checksum != state_checksum(state):
            log.warning("skipping checkpoint %s: checksum mismatch (damaged or cut short)", path)
            return None
        if state.task_id != task_id:
            log.warning("skipping checkpoint %s: it belongs to task %r", path, state.task_id)
            return None
        return state

    def _task_dir(self, task_id: str) -> Path:
        if not re.match(TASK_ID_PATTERN, task_id):
            raise CheckpointError(f"task id {task_id!r} must match {TASK_ID_PATTERN}")
        return self.directory / task_id

    @staticmethod
    def _files(task_dir: Path) -> list[tuple[int, Path]]:
        found = []
        for path in task_dir.iterdir():
            match = _FILE_PATTERN.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return found

    def _prune(self, task_dir: Path) -> None:
        files = sorted(self._files(task_dir))
        for _, path in files[: max(0, len(files) - self.keep)]:
            path.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    # Without this the rename itself may not survive a power cut, even though the file's data did.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
