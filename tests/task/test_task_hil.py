"""The task runner on the real simulated tabletop: the expert as policy, an operator take-over, the dataset."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hil.expert import ScriptedExpert
from hil.tasks import make_chain, parse_instruction
from hil.world import TabletopWorld
from vla_edge.checkpoint import CheckpointStore
from vla_edge.config import TaskSettings
from vla_edge.operator.escalation import Decision, EscalationQueue, TeleopCommand
from vla_edge.recorder import EpisodeRecorder
from vla_edge.task import TaskRunner, TaskSpec


def _load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HilExecutor = _load("hil_executor").HilExecutor


def drive_like_the_expert(executor, runner, instruction, timeout=120.0):
    """Plays a careful operator: sends the moves the scripted expert would make, then 'done'."""
    expert = ScriptedExpert(np.random.default_rng(1), noise=0.0)
    expert.reset(parse_instruction(instruction))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with executor.lock:
            action = expert.act(executor.world)
            here = executor.world.gripper_position()
        if action[3] > 0.5:
            runner.teleop.put(TeleopCommand(done=True))
            return
        applied = executor.applied_inputs
        delta = np.clip(action[:2] - here, -0.1, 0.1)
        runner.teleop.put(TeleopCommand(dx=float(delta[0]), dy=float(delta[1]), grip=float(action[2])))
        while executor.applied_inputs == applied and time.monotonic() < deadline:
            time.sleep(0.002)
    raise AssertionError("the operator could not finish the step")


@pytest.mark.slow
def test_chain_with_low_confidence_takeover_records_interventions(tmp_path):
    world = TabletopWorld(seed=3)
    chain = make_chain(np.random.default_rng(3), world, n_steps=4)
    spec = TaskSpec("hil-chain", tuple(step.instruction for step in chain))
    recorder = EpisodeRecorder(tmp_path / "dataset", fps=10)
    executor = HilExecutor(world, recorder, faults={(1, 0): 5, (2, 0): 3})
    queue = EscalationQueue()
    runner = TaskRunner(
        spec, executor, queue, CheckpointStore(tmp_path / "state"), TaskSettings(checkpoint_every=3),
        answer_timeout_s=5.0, verifier=executor.verify,
    )
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=runner.run(threading.Event())))
    thread.start()

    # Step 1: low confidence → the operator takes over and finishes it by hand.
    esc = _wait_open(queue)
    assert (esc.kind, esc.step_index, esc.instruction) == ("low_confidence", 1, chain[1].instruction)
    assert esc.frame_jpeg_b64 and esc.confidence["spread"] == pytest.approx(0.31)
    queue.decide(Decision(escalation_id=esc.id, action="takeover", operator="test"))
    _wait(lambda: runner.teleop.active_step == 1)
    drive_like_the_expert(executor, runner, chain[1].instruction)

    # Step 2: low confidence → approve: the chunk is actuated once and the policy finishes the step.
    esc = _wait_open(queue)
    assert esc.step_index == 2
    queue.decide(Decision(escalation_id=esc.id, action="approve"))
    thread.join(30)
    assert not thread.is_alive()
    outcome = result["r"]
    assert outcome.status == "completed", outcome.reason
    assert [h.resolution for h in outcome.history] == ["done", "teleoperated", "done", "done"]
    assert executor.overrides == [2]
    assert "low confidence" in executor.holds

    info = json.loads((tmp_path / "dataset/meta/info.json").read_text())
    assert info["total_episodes"] == 4
    table = pq.read_table(tmp_path / "dataset/data/chunk-000/file-000.parquet")  # v3.0: episodes share a file
    rows = list(zip(table.column("episode_index").to_pylist(), table.column("intervention").to_pylist(), strict=True))
    flags = [[flag for episode, flag in rows if episode == i] for i in range(4)]
    assert not any(flags[0]) and not any(flags[2]) and not any(flags[3])
    assert flags[1][:5] == [False] * 5, "the policy's ticks before the hold are not interventions"
    assert all(flags[1][5:]) and len(flags[1]) > 10, "the operator's ticks are"
    assert CheckpointStore(tmp_path / "state").load_latest("hil-chain").next_step == 4


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _wait_open(queue):
    _wait(lambda: queue.open())
    return queue.open()[0]
