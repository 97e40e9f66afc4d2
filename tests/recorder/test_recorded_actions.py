"""The daemon records, as each frame's action, the command the controller executed, not the one it sent.

Real parts: the daemon (ONNX Runtime on the committed bundle, ZeroMQ stream), the simulated arm behind the real
`ControllerClient`, and the recorder writing a v3.0 dataset. The controller is given tighter velocity limits
than the policy's commands respect, so it rejects some of them (``over_velocity``) and holds; those commands
must not appear in the dataset as executed.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

import hil.sim_robot
from hil.harness import SimPorts
from hil.sim_robot import SimEndpoints, SimRobot
from hil.world import MAX_STEP
from vla_edge.config import StreamSettings, load_settings
from vla_edge.controller import ActionLimits
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.service import Daemon

pytestmark = pytest.mark.slow


class RecordingRobot:
    """The simulated robot in a thread of the test, logging every command's values and what it executed."""

    def __init__(self, seed: int) -> None:
        self.ports = SimPorts.pick()
        stream = StreamSettings(command_endpoint=self.ports.endpoint(self.ports.commands),
                                state_endpoint=self.ports.endpoint(self.ports.state), curve=False)
        self.robot = SimRobot(seed, stream, SimEndpoints(frames=self.ports.endpoint(self.ports.frames),
                                                         sim=self.ports.endpoint(self.ports.sim)))
        self.executed: dict[int, np.ndarray] = {}
        world_tick = self.robot._world_tick

        def logged_world_tick(now, values, seq=-1, reason=""):
            if values is not None:
                self.executed[seq] = np.asarray(values, np.float32)
            world_tick(now, values, seq, reason)

        self.robot._world_tick = logged_world_tick
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.robot.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> RecordingRobot:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.robot.close()


def test_rejected_commands_are_not_recorded_as_executed(tmp_path, monkeypatch):
    # The controller accepts at most 0.064 per tick in x and y; the policy's targets lead the gripper by up to
    # ~0.1, so the controller rejects part of them (the daemon itself is unchanged).
    tight = 0.8 * MAX_STEP
    monkeypatch.setattr(hil.sim_robot, "SIM_LIMITS",
                        ActionLimits(low=[0.0] * 4, high=[1.0] * 4, max_delta=[tight, tight, 1.0, 1.0]))
    with RecordingRobot(seed=5) as robot:
        ports = robot.ports
        settings = load_settings(None, **{
            "camera": {"source": "sim", "sim_endpoint": ports.endpoint(ports.frames)},
            "stream": {"command_endpoint": ports.endpoint(ports.commands),
                       "state_endpoint": ports.endpoint(ports.state), "curve": False},
            "task": {"state_dir": str(tmp_path / "state"), "step_timeout_s": 4.0},
            "recorder": {"enabled": True, "dataset_dir": str(tmp_path / "ds")},
            "operator": {"enabled": False}, "telemetry": {"metrics_port": 0},
            "confidence": {"enabled": False},
            "policy": {"bundle": str(REFERENCE_BUNDLE_DIR), "precision": "int8"},
        })
        sent: dict[int, np.ndarray] = {}
        with Daemon(settings) as daemon:
            assert daemon.wait_for_controller(15.0) and daemon.wait_for_camera(10.0)
            send_action = daemon.stream.send_action

            def logged_send(values, t_due_ns):
                seq = send_action(values, t_due_ns)
                sent[seq] = np.asarray(values, np.float32)
                return seq

            daemon.stream.send_action = logged_send
            daemon.executor.run_step(0, "put the blue block in the top bin", threading.Event())
            state = daemon.stream.latest_state()
    rejected = {seq: v for seq, v in sent.items() if seq not in robot.executed}
    assert state is not None and state.counters.get("rejected_over_velocity", 0) > 0, "no command was rejected"
    assert len(rejected) >= 1, "no rejected command to show anything with"

    table = pq.read_table(tmp_path / "ds" / "data" / "chunk-000" / "file-000.parquet")
    recorded = np.asarray(table.column("action").to_pylist(), np.float32)
    assert len(recorded) > 10
    executed_values = np.stack(list(robot.executed.values()))
    for row in recorded:
        # Every recorded action is exactly a command the controller executed ...
        assert np.any(np.all(executed_values == row, axis=1)), f"recorded {row} was never executed"
    # ... and none is a command it rejected (unless the very same values were executed under another number).
    for values in rejected.values():
        if not np.any(np.all(executed_values == values, axis=1)):
            assert not np.any(np.all(recorded == values, axis=1)), f"rejected command {values} recorded"
    # `actual` is the controller's report (the arm's position, grip and the done it executed), a value per frame.
    actual = np.asarray(table.column("actual").to_pylist())
    assert actual.shape == (len(recorded), 4) and np.all(np.isfinite(actual))
