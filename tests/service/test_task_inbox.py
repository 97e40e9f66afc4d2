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


def _hostile_files(directory):
    """Files a careless tool or an attacker could drop: each must fail alone, never the daemon."""
    return {
        "deep.json": b'{"task_id": "x", "steps": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "deep.toml": b"steps = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "latin1.toml": 'task_id = "t"\nsteps = ["mets le bloc rouge à gauche"]\n'.encode("latin-1"),
        "binary.json": bytes(range(256)) * 4,
        "surrogate.json": b'{"task_id": "s", "steps": ["put the red \\udcff block in the left bin"]}',
        "huge.json": b'{"task_id": "h", "steps": ["' + b"a" * (2 << 20) + b'"]}',
        "not-a-task.toml": b"steps = 3\n",
    }


def test_hostile_task_files_fail_alone_and_the_next_good_task_runs(tmp_path):
    import threading

    from vla_edge.commands.run import serve_inbox

    inbox = TaskInbox(tmp_path / "tasks")
    for i, (name, data) in enumerate(_hostile_files(inbox.directory).items()):
        (inbox.directory / name).write_bytes(data)
        os.utime(inbox.directory / name, (1000 + i, 1000 + i))  # older than the good task: read first
    bad_name = os.fsencode(inbox.directory) + b"/caf\xe9.json"  # a file name that is not UTF-8
    with open(bad_name, "wb") as handle:
        handle.write(b"{")
    os.utime(bad_name, (999, 999))
    good = inbox.directory / "zz-good.toml"
    good.write_text('task_id = "good"\nsteps = ["put the red block in the left bin"]\n')
    stop = threading.Event()
    daemon = _RecordingDaemon(["completed"], stop)
    serve_inbox(daemon, inbox, stop, poll_s=0.01)  # returns (stop set by the idle daemon): nothing escaped
    assert daemon.ran == ["good"]
    assert (inbox.directory / "done" / "zz-good.toml").exists()
    failed = inbox.directory / "failed"
    for name in _hostile_files(inbox.directory):
        assert not (inbox.directory / name).exists(), name
        reason = (failed / f"{name}.error").read_text()
        assert reason.startswith("not a valid task file: task file"), (name, reason)
    assert "nested too deeply" in (failed / "deep.json.error").read_text()
    assert "nested too deeply" in (failed / "deep.toml.error").read_text()
    assert "not UTF-8" in (failed / "latin1.toml.error").read_text()
    assert "larger than" in (failed / "huge.json.error").read_text()
    assert "not valid Unicode" in (failed / "surrogate.json.error").read_text()
    assert os.path.exists(os.fsencode(failed) + b"/caf\xe9.json.error")


def test_a_refused_file_that_cannot_be_moved_is_skipped_not_retried_forever(tmp_path, caplog):
    import logging

    inbox = TaskInbox(tmp_path / "tasks")
    (inbox.directory / "failed").rmdir()
    (inbox.directory / "failed").write_text("a file where the failed/ directory should be")
    (inbox.directory / "bad.toml").write_text("steps = 3\n")
    with caplog.at_level(logging.ERROR, logger="vla_edge.inbox"):
        assert inbox.take() is None
        assert inbox.take() is None
    moves = [r for r in caplog.records if "cannot move task file" in r.getMessage()]
    assert len(moves) == 1  # said once; the second look skips the unchanged file
    (inbox.directory / "good.toml").write_text('task_id = "g"\nsteps = ["put the red block in the left bin"]\n')
    taken = inbox.take()
    assert taken is not None and taken[1].task_id == "g"


def test_a_bug_in_the_reader_fails_the_file_not_the_daemon(tmp_path):
    def broken_loader(path):
        raise KeyError("a bug, not a TaskError")

    inbox = TaskInbox(tmp_path / "tasks", load=broken_loader)
    (inbox.directory / "t.toml").write_text('task_id = "t"\nsteps = ["x"]\n')
    assert inbox.take() is None
    assert "KeyError" in (inbox.directory / "failed" / "t.toml.error").read_text() or \
        "a bug" in (inbox.directory / "failed" / "t.toml.error").read_text()
