"""The task runner's decisions, cadence, timeouts and stop, with a scripted executor and a real queue."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest

from tests.waiting import GENEROUS_S, wait_for
from vla_edge.checkpoint import CheckpointStore
from vla_edge.config import TaskSettings
from vla_edge.operator.escalation import Decision, EscalationQueue, TeleopCommand
from vla_edge.task import TaskError, TaskRunner, TaskSpec, Verification, load_task

_spec = importlib.util.spec_from_file_location("scripted_executor", Path(__file__).with_name("scripted_executor.py"))
scripted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scripted)
ScriptedExecutor = scripted.ScriptedExecutor

SPEC = TaskSpec("t1", tuple(f"instruction {i}" for i in range(7)))


def make_runner(tmp_path, executor, *, every=3, verify=False, timeout=5.0, **kw):
    queue = EscalationQueue()
    events = []
    runner = TaskRunner(
        kw.pop("spec", SPEC),
        executor,
        queue,
        CheckpointStore(tmp_path / "state"),
        TaskSettings(checkpoint_every=every, verify_at_checkpoint=verify, state_dir=tmp_path / "state"),
        answer_timeout_s=timeout,
        events=events.append,
        **kw,
    )
    return runner, queue, events


class Background:
    """Runs the runner in a thread so the test can play the operator."""

    def __init__(self, runner):
        self.stop = threading.Event()
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(runner,), daemon=True)
        self.thread.start()

    def _run(self, runner):
        self.result = runner.run(self.stop)

    def join(self, timeout=GENEROUS_S):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "runner did not finish"
        return self.result


def wait_open(queue, count=1, timeout=GENEROUS_S, exclude=()):
    """The newest open escalation once ``count`` are open (none of the ids in ``exclude``)."""
    def ready():
        found = [e for e in queue.open() if e.id not in exclude]
        return found if len(found) >= count else None

    return wait_for(ready, timeout, f"{count} open escalation(s)")[-1]


def test_clean_run_checkpoints_every_n_steps(tmp_path):
    executor = ScriptedExecutor()
    runner, _, events = make_runner(tmp_path, executor, every=3)
    result = runner.run(threading.Event())
    assert result.status == "completed" and result.next_step == 7 and result.resumed_from is None
    checkpoints = [e.step_index for e in events if e.kind == "checkpoint"]
    assert checkpoints == [3, 6, 7]
    assert [c[0] for c in executor.calls] == list(range(7))
    latest = runner.store.load_latest("t1")
    assert latest.next_step == 7 and len(latest.history) == 7


def test_low_confidence_approve_overrides_once(tmp_path):
    executor = ScriptedExecutor({2: ["low_confidence"]})
    runner, queue, _ = make_runner(tmp_path, executor)
    bg = Background(runner)
    esc = wait_open(queue)
    assert esc.kind == "low_confidence" and esc.step_index == 2 and esc.instruction == "instruction 2"
    assert esc.frame_jpeg_b64 and esc.confidence == {"spread": 0.9}
    assert any(h.startswith("low_confidence") for h in executor.holds)
    queue.decide(Decision(escalation_id=esc.id, action="approve"))
    result = bg.join()
    assert result.status == "completed"
    assert executor.calls[2:4] == [(2, False), (2, True)]
    assert result.counters["decision_approve"] == 1


def test_stalled_retry_runs_step_again_without_override(tmp_path):
    executor = ScriptedExecutor({1: ["stalled", "stalled"]})
    runner, queue, _ = make_runner(tmp_path, executor)
    bg = Background(runner)
    decided = []
    for _ in range(2):
        esc = wait_open(queue, exclude=decided)  # the next one, not the one just answered
        assert esc.kind == "stalled"
        queue.decide(Decision(escalation_id=esc.id, action="retry"))
        decided.append(esc.id)
    result = bg.join()
    assert result.status == "completed"
    assert [c for c in executor.calls if c[0] == 1] == [(1, False)] * 3
    assert result.history[1].attempts == 3 and result.history[1].escalations == 2


def test_takeover_moves_through_teleop_channel_and_marks_step(tmp_path):
    executor = ScriptedExecutor({4: ["low_confidence"]})
    runner, queue, _ = make_runner(tmp_path, executor)
    bg = Background(runner)
    esc = wait_open(queue)
    queue.decide(Decision(escalation_id=esc.id, action="takeover"))
    wait_for(lambda: runner.teleop.active_step == 4, what="the take-over of step 4")
    assert runner.teleop.put(TeleopCommand(dx=0.05))
    wait_for(lambda: executor.position[0] == pytest.approx(0.55), what="the first move to be applied")
    assert runner.teleop.put(TeleopCommand(dy=-0.05, grip=1.0))
    wait_for(lambda: executor.grip == 1.0, what="the second move to be applied")
    assert runner.teleop.put(TeleopCommand(done=True))
    result = bg.join()
    assert result.status == "completed"
    assert executor.teleop_steps == [4]
    assert executor.position == pytest.approx([0.55, 0.45])
    assert executor.grip == 1.0
    assert result.history[4].resolution == "teleoperated"
    assert not runner.teleop.put(TeleopCommand(dx=0.01)), "teleop must be refused once the take-over ended"


def test_abort_ends_task_holding(tmp_path):
    executor = ScriptedExecutor({3: ["stalled"]})
    runner, queue, _ = make_runner(tmp_path, executor)
    bg = Background(runner)
    esc = wait_open(queue)
    queue.decide(Decision(escalation_id=esc.id, action="abort", operator="ana"))
    result = bg.join()
    assert result.status == "aborted" and result.next_step == 3 and "ana" in result.reason
    assert executor.holds[-1]
    assert [c[0] for c in executor.calls] == [0, 1, 2, 3]


def test_answer_timeout_keeps_hold_and_escalation_open(tmp_path):
    executor = ScriptedExecutor({0: ["low_confidence"]})
    runner, queue, events = make_runner(tmp_path, executor, timeout=0.1)
    bg = Background(runner)
    esc = wait_open(queue)
    wait_for(lambda: sum(e.kind == "answer_timeout" for e in events) >= 3, what="three answer timeouts")
    assert queue.open() == [esc], "the escalation must stay open while nobody answers"
    assert len(executor.calls) == 1, "the task must not proceed without an answer"
    assert sum("no operator answer" in h for h in executor.holds) >= 3
    assert queue.history()[-1].answer_timeouts >= 3
    queue.decide(Decision(escalation_id=esc.id, action="approve"))
    assert bg.join().status == "completed"


def test_stop_while_waiting_exits_cleanly_holding(tmp_path):
    executor = ScriptedExecutor({1: ["stalled"]})
    runner, queue, _ = make_runner(tmp_path, executor)
    bg = Background(runner)
    esc = wait_open(queue)
    bg.stop.set()
    result = bg.join()
    assert result.status == "stopped" and result.next_step == 1
    assert "stop" in executor.holds[-1] or "stop" in result.reason
    assert queue.open() == [] and queue.history()[-1].status == "withdrawn"
    assert queue.history()[-1].escalation_id == esc.id


def test_failed_automatic_verification_escalates_and_approve_accepts(tmp_path):
    rejected = []

    def verifier(step, instruction, report):
        if step == 5 and not rejected:
            rejected.append(step)
            return Verification(False, "block not in bin")
        return Verification(True)

    executor = ScriptedExecutor()
    runner, queue, _ = make_runner(tmp_path, executor, verifier=verifier)
    bg = Background(runner)
    esc = wait_open(queue)
    assert esc.kind == "verify" and esc.reason == "block not in bin" and esc.step_index == 5
    queue.decide(Decision(escalation_id=esc.id, action="approve"))
    result = bg.join()
    assert result.status == "completed" and result.history[5].resolution == "approved"


def test_verify_at_checkpoint_retry_redoes_chosen_step(tmp_path):
    executor = ScriptedExecutor()
    runner, queue, events = make_runner(tmp_path, executor, every=3, verify=True)
    bg = Background(runner)
    esc = wait_open(queue)
    assert esc.kind == "verify" and esc.steps == (0, 1, 2)
    assert [c[0] for c in executor.calls] == [0, 1, 2], "the runner must wait for the verification"
    with pytest.raises(Exception, match="not one this escalation covers"):
        queue.decide(Decision(escalation_id=esc.id, action="retry", step_index=5))
    queue.decide(Decision(escalation_id=esc.id, action="retry", step_index=1))
    esc2 = wait_open(queue)
    assert esc2.id != esc.id and esc2.steps == (0, 1, 2)
    queue.decide(Decision(escalation_id=esc2.id, action="approve"))
    esc3 = wait_open(queue)
    assert esc3.steps == (3, 4, 5)
    queue.decide(Decision(escalation_id=esc3.id, action="approve"))
    esc4 = wait_open(queue)
    assert esc4.steps == (6,)
    queue.decide(Decision(escalation_id=esc4.id, action="approve"))
    result = bg.join()
    assert result.status == "completed"
    assert [c[0] for c in executor.calls] == [0, 1, 2, 1, 2, 3, 4, 5, 6]


def test_verify_at_checkpoint_takeover_drives_chosen_step(tmp_path):
    executor = ScriptedExecutor()
    runner, queue, _ = make_runner(tmp_path, executor, every=3, verify=True, spec=TaskSpec("t2", ("a", "b", "c")))
    bg = Background(runner)
    esc = wait_open(queue)
    queue.decide(Decision(escalation_id=esc.id, action="takeover"))
    wait_for(lambda: runner.teleop.active_step is not None, what="the take-over")
    assert runner.teleop.active_step == 2, "default take-over step is the last one verified"
    runner.teleop.put(TeleopCommand(done=True))
    # After the take-over the operator is asked to verify the segment again; nothing else is re-run.
    again = wait_open(queue)
    assert again.id != esc.id and again.kind == "verify"
    calls_before = len(executor.calls)
    queue.decide(Decision(escalation_id=again.id, action="approve"))
    result = bg.join()
    assert result.status == "completed" and result.history[-1].resolution == "teleoperated"
    assert len(executor.calls) == calls_before


def test_pending_verification_survives_restart(tmp_path):
    executor = ScriptedExecutor()
    runner, queue, _ = make_runner(tmp_path, executor, every=3, verify=True)
    bg = Background(runner)
    wait_open(queue)
    bg.stop.set()
    assert bg.join().status == "stopped"
    # A new runner (as after a restart) asks the same question before running anything.
    executor2 = ScriptedExecutor()
    runner2, queue2, _ = make_runner(tmp_path, executor2, every=3, verify=True)
    bg2 = Background(runner2)
    esc = wait_open(queue2)
    assert esc.steps == (0, 1, 2) and executor2.calls == []
    bg2.stop.set()
    assert bg2.join().resumed_from == 3


def test_changed_task_with_same_id_is_refused(tmp_path):
    runner, _, _ = make_runner(tmp_path, ScriptedExecutor())
    runner.run(threading.Event())
    changed = TaskSpec("t1", ("something else",))
    runner2, _, _ = make_runner(tmp_path, ScriptedExecutor(), spec=changed)
    with pytest.raises(TaskError, match="different instructions"):
        runner2.run(threading.Event())


def test_load_task_files(tmp_path):
    good = tmp_path / "task.toml"
    good.write_text('task_id = "kitchen-1"\nsteps = ["put the red block in the left bin", "put the blue block in the top bin"]\n')
    assert load_task(good) == TaskSpec("kitchen-1", ("put the red block in the left bin", "put the blue block in the top bin"))
    as_json = tmp_path / "task.json"
    as_json.write_text('{"task_id": "j", "steps": ["x"]}')
    assert load_task(as_json).steps == ("x",)
    bad = tmp_path / "bad.toml"
    bad.write_text('task_id = "has space"\nsteps = []\n')
    with pytest.raises(TaskError, match="task_id") as info:
        load_task(bad)
    assert "steps" in str(info.value)
    with pytest.raises(TaskError, match="cannot read"):
        load_task(tmp_path / "missing.toml")


# -- recovery before asking and automatic verification (issue 14) ------------------------------------------------


def test_a_stalled_step_is_retried_autonomously_before_anyone_is_asked(tmp_path):
    executor = ScriptedExecutor({2: ["stalled", "done"], 4: ["stalled", "stalled"]})
    runner, queue, events = make_runner(tmp_path, executor, step_retries=1)
    bg = Background(runner)
    esc = wait_open(queue)  # step 2 recovered by itself; step 4 stalled twice: now the operator is asked
    assert esc.kind == "stalled" and esc.step_index == 4
    queue.decide(Decision(escalation_id=esc.id, action="retry"))
    result = bg.join()
    assert result.status == "completed"
    assert [c[0] for c in executor.calls].count(2) == 2 and [c[0] for c in executor.calls].count(4) == 3
    retries = [e for e in events if e.kind == "step_retry"]
    assert [(e.step_index, e.detail["after"]) for e in retries] == [(2, "stalled"), (4, "stalled")]
    assert result.counters["autonomous_retries"] == 2 and result.counters["escalations"] == 1


def test_a_confident_verifier_failure_is_retried_and_low_confidence_is_not(tmp_path):
    verdicts = [Verification(False, "red block not in the left bin")]

    def verifier(step, instruction, report):
        return verdicts.pop() if step == 1 and verdicts else Verification(True)

    executor = ScriptedExecutor({3: ["low_confidence"]})
    runner, queue, events = make_runner(tmp_path, executor, verifier=verifier, step_retries=1)
    bg = Background(runner)
    esc = wait_open(queue)
    assert esc.kind == "low_confidence" and esc.step_index == 3, "a refusal was already re-sampled: it escalates"
    queue.decide(Decision(escalation_id=esc.id, action="retry"))
    result = bg.join()
    assert result.status == "completed" and result.counters["autonomous_retries"] == 1
    assert [c[0] for c in executor.calls].count(1) == 2


class SceneChecker:
    """A scene verifier whose answers the test sets: ``answers[instructions] = (ok, sure)``; records its calls."""

    def __init__(self, answers=None, default=(True, True)):
        self.answers = answers or {}
        self.default = default
        self.calls = []

    def verify(self, instructions, before, after):
        self.calls.append((instructions, before is not None, after is not None))
        ok, sure = self.answers.get(instructions, self.default)
        return Verification(ok, "" if ok else "not as expected", sure=sure, p=0.99 if ok else 0.01)


def test_a_sure_scene_verifier_approves_checkpoints_without_the_operator(tmp_path):
    checker = SceneChecker()
    executor = ScriptedExecutor()
    runner, queue, events = make_runner(tmp_path, executor, every=3, verify=True, scene_verifier=checker)
    result = runner.run(threading.Event())
    assert result.status == "completed" and queue.history() == []
    assert result.counters["verified_automatically"] == 3  # after steps 3, 6 and 7
    segments = [c[0] for c in checker.calls if len(c[0]) > 1]
    assert segments == [SPEC.steps[0:3], SPEC.steps[3:6]] and all(c[1] and c[2] for c in checker.calls)
    checkpoint_checks = [e for e in events if e.kind == "verified" and e.detail["scope"] == "checkpoint"]
    assert len(checkpoint_checks) == 3 and all(e.detail["ok"] for e in checkpoint_checks)


def test_an_unsure_step_sends_its_segment_to_the_operator(tmp_path):
    checker = SceneChecker({(SPEC.steps[4],): (True, False)})
    executor = ScriptedExecutor()
    runner, queue, _ = make_runner(tmp_path, executor, every=3, verify=True, scene_verifier=checker)
    bg = Background(runner)
    esc = wait_open(queue)
    assert esc.kind == "verify" and esc.steps == (3, 4, 5), "the verifier was unsure about step 4"
    queue.decide(Decision(escalation_id=esc.id, action="approve"))
    result = bg.join()
    assert result.status == "completed" and result.counters["verified_automatically"] == 2
    assert result.counters["verifier_unsure"] == 1


def test_a_scene_verifier_sure_of_a_failure_retries_then_asks(tmp_path):
    checker = SceneChecker({(SPEC.steps[2],): (False, True)})
    executor = ScriptedExecutor()
    runner, queue, events = make_runner(tmp_path, executor, every=3, verify=True, scene_verifier=checker,
                                        step_retries=1)
    bg = Background(runner)
    esc = wait_open(queue)
    assert esc.kind == "verify" and esc.step_index == 2 and esc.reason == "not as expected"
    queue.decide(Decision(escalation_id=esc.id, action="approve"))
    result = bg.join()
    assert [c[0] for c in executor.calls].count(2) == 2 and result.counters["autonomous_retries"] == 1
    assert result.history[2].resolution == "approved"


def test_without_checkpoint_verification_an_unsure_step_is_asked_about_at_once(tmp_path):
    checker = SceneChecker({(SPEC.steps[1],): (True, False)})
    executor = ScriptedExecutor()
    runner, queue, _ = make_runner(tmp_path, executor, verify=False, scene_verifier=checker, step_retries=1)
    bg = Background(runner)
    esc = wait_open(queue)
    assert esc.kind == "verify" and esc.step_index == 1
    queue.decide(Decision(escalation_id=esc.id, action="approve"))
    assert bg.join().status == "completed"
    assert [c[0] for c in executor.calls].count(1) == 1, "an unsure check is not a failure: no retry"
