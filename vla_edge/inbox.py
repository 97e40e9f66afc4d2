"""The task inbox of a long-running daemon: task files dropped into a directory run oldest first.

A file stays in the inbox while its task runs, so a daemon killed mid-task finds it again on restart and the
task runner resumes it from its last checkpoint. A finished file moves to ``done/`` (completed) or ``failed/``
(aborted, or not a valid task file, with a ``.error`` note beside it). A stopped task stays in the inbox.

A file that cannot be read as a task never takes the daemon down: *any* error while reading it (I/O, encoding,
size, nesting, schema, or a bug in the reader) moves it to ``failed/`` with the reason, and the next file is
tried. If even that move fails (a read-only inbox), the file is skipped for as long as it stays unchanged, and
said so once in the log, so a restart does not crash-loop on it either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from vla_edge.task import TaskSpec, load_task

log = logging.getLogger(__name__)

TASK_SUFFIXES = (".toml", ".json")


class TaskInbox:
    def __init__(self, directory: Path, load: Callable[[Path], TaskSpec] = load_task) -> None:
        self.directory = Path(directory)
        self._load = load
        self._skipped: set[tuple[str, int, int]] = set()  # (name, mtime_ns, size) of files that could not be moved
        for sub in ("", "done", "failed"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)

    def _candidates(self) -> list[tuple[tuple[int, str], Path, tuple[str, int, int]]]:
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(".") or Path(entry.name).suffix.lower() not in TASK_SUFFIXES:
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except OSError:  # gone between the listing and the stat, or a dangling link: not a task (yet)
                    continue
                identity = (entry.name, st.st_mtime_ns, st.st_size)
                if identity not in self._skipped:
                    found.append(((st.st_mtime_ns, entry.name), Path(entry.path), identity))
        return sorted(found, key=lambda item: item[0])

    def next_task(self) -> Path | None:
        """The oldest task file waiting (by modification time, then name), or None."""
        candidates = self._candidates()
        return candidates[0][1] if candidates else None

    def take(self) -> tuple[Path, TaskSpec] | None:
        """The oldest file that reads as a valid task, with its spec; or None when none is waiting.

        Files before it that do not read as a task are moved to ``failed/`` with the reason on the way.
        """
        for _, path, identity in self._candidates():
            try:
                return path, self._load(path)
            except Exception as exc:  # noqa: BLE001 - any error reading a task file fails that file, never the daemon
                reason = " ".join(str(exc).split()) or type(exc).__name__
                log.error("refusing task file %s: %s", path, reason)
                self._fail(path, identity, f"not a valid task file: {reason}")
        return None

    def _fail(self, path: Path, identity: tuple[str, int, int], note: str) -> None:
        try:
            self.finish(path, "failed", note)
        except FileNotFoundError:
            pass  # taken away meanwhile: nothing left to do
        except OSError as exc:
            self._skipped.add(identity)
            log.error("cannot move task file %s to %s: %s; skipping it while it stays unchanged", path,
                      self.directory / "failed", exc.strerror or exc)

    def finish(self, path: Path, outcome: str, note: str = "") -> Path:
        """Move a task file out of the inbox: ``outcome`` "done" or "failed" (with an explanatory note)."""
        target_dir = self.directory / ("done" if outcome == "done" else "failed")
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / path.name
        os.replace(path, target)
        if note:
            # backslashreplace: a file name that is not UTF-8 (surrogate escapes) must not fail the note
            target.with_name(target.name + ".error").write_text(note + "\n", encoding="utf-8", errors="backslashreplace")
        return target
