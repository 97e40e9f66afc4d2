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


class _RecordingDaemon:
    """Stands in for the daemon: serve_inbox only asks it to idle and to run a task (the file logic is tested)."""

    def __init__(self, statuses, stop):
        self.statuses = list(statuses)
        self.ran = []
        self.stop = stop

    def idle(self):
        if not self.statuses:
            self.stop.set()

    def run_task(self, spec, stop):
        from vla_edge.task import TaskResult

        self.ran.append(spec.task_id)
        status = self.statuses.pop(0)
        if status == "stopped":
            stop.set()  # as SIGTERM does: the task ends "stopped" because the daemon is stopping
        return TaskResult(spec.task_id, status, 1, (), {}, None, "operator aborted")


def test_serve_inbox_moves_files_by_outcome(tmp_path):
    import threading

    from vla_edge.commands.run import serve_inbox

    inbox = TaskInbox(tmp_path / "tasks")
    for i, name in enumerate(["a.toml", "b.toml", "c.toml"]):
        path = inbox.directory / name
        path.write_text(f'task_id = "t{i}"\nsteps = ["put the red block in the left bin"]\n')
        os.utime(path, (1000 + i, 1000 + i))
    stop = threading.Event()
    daemon = _RecordingDaemon(["completed", "aborted", "stopped"], stop)
    serve_inbox(daemon, inbox, stop, poll_s=0.01)
    assert daemon.ran == ["t0", "t1", "t2"]
    assert (inbox.directory / "done" / "a.toml").exists()
    assert "aborted" in (inbox.directory / "failed" / "b.toml.error").read_text()
    assert (inbox.directory / "c.toml").exists()  # stopped: stays to resume
