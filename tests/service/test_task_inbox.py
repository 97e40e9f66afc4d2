import os
import time

from vla_edge.inbox import TaskInbox


def test_oldest_task_first_and_finished_files_move(tmp_path):
    inbox = TaskInbox(tmp_path / "tasks")
    first = inbox.directory / "b.toml"
    second = inbox.directory / "a.json"
    first.write_text("x")
    second.write_text("y")
    old = time.time() - 60
    os.utime(first, (old, old))
    (inbox.directory / "notes.txt").write_text("ignored")
    (inbox.directory / ".hidden.toml").write_text("ignored")
    assert inbox.next_task() == first
    moved = inbox.finish(first, "done")
    assert moved.parent.name == "done" and moved.read_text() == "x"
    assert inbox.next_task() == second
    failed = inbox.finish(second, "failed", "task file is invalid: steps missing")
    assert failed.parent.name == "failed"
    assert "steps missing" in failed.with_name("a.json.error").read_text()
    assert inbox.next_task() is None
