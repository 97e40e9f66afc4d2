"""The task inbox of a long-running daemon: task files dropped into a directory run oldest first.

A file stays in the inbox while its task runs, so a daemon killed mid-task finds it again on restart and the
task runner resumes it from its last checkpoint. A finished file moves to ``done/`` (completed) or ``failed/``
(aborted, or not a valid task file, with a ``.error`` note beside it). A stopped task stays in the inbox.
"""

from __future__ import annotations

import os
from pathlib import Path

TASK_SUFFIXES = (".toml", ".json")


class TaskInbox:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        for sub in ("", "done", "failed"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)

    def next_task(self) -> Path | None:
        """The oldest task file waiting (by modification time, then name), or None."""
        candidates = [
            p for p in self.directory.iterdir()
            if p.is_file() and p.suffix.lower() in TASK_SUFFIXES and not p.name.startswith(".")
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def finish(self, path: Path, outcome: str, note: str = "") -> Path:
        """Move a task file out of the inbox: ``outcome`` "done" or "failed" (with an explanatory note)."""
        target_dir = self.directory / ("done" if outcome == "done" else "failed")
        target = target_dir / path.name
        os.replace(path, target)
        if note:
            target.with_name(target.name + ".error").write_text(note + "\n", encoding="utf-8")
        return target
