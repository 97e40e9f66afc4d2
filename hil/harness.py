"""Harness pieces shared by the demo, the end-to-end tests and the chain benchmark.

* `SimRobotProcess`: starts `hil.sim_robot` as its own process on free loopback ports (a real robot is another
  machine; here it is at least another process, so kill -9 and SIGSTOP tests mean something).
* `StepJudge`: listens to the task runner's events and asks the simulator's judge how each step really ended.
* `SimulatedOperator`: answers escalations through the same queue and teleop channel the web console uses,
  after a delay, as a careful human would: it looks at the scene (the judge) and approves, or takes over and
  drives the step with the scripted expert's moves.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hil.sim_robot import SimChannel
from vla_edge.operator.escalation import Decision, EscalationQueue, TeleopChannel, TeleopCommand
from vla_edge.task import TaskEvent

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SimPorts:
    frames: int
    sim: int
    commands: int
    state: int

    @classmethod
    def pick(cls) -> SimPorts:
        return cls(free_port(), free_port(), free_port(), free_port())

    def endpoint(self, port: int) -> str:
        return f"tcp://127.0.0.1:{port}"


class SimRobotProcess:
    """`python -m hil.sim_robot` in a child process, with plain TCP on loopback (the demo's set-up)."""

    def __init__(self, seed: int, ports: SimPorts | None = None, log_path: Path | None = None) -> None:
        self.seed = seed
        self.ports = ports or SimPorts.pick()
        self._log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> SimRobotProcess:
        p = self.ports
        command = [
            sys.executable, "-m", "hil.sim_robot", "--seed", str(self.seed), "--no-curve",
            "--frames", p.endpoint(p.frames), "--sim", p.endpoint(p.sim),
            "--commands", p.endpoint(p.commands), "--state", p.endpoint(p.state),
        ]
        output = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        return self

    def channel(self) -> SimChannel:
        return SimChannel(self.ports.endpoint(self.ports.sim))

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def __enter__(self) -> SimRobotProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class StepJudge:
    """Judges every finished step in the simulator (ground truth the daemon never sees)."""

    sim: SimChannel
    outcomes: dict[int, tuple[bool, str]] = field(default_factory=dict)
    autonomous: dict[int, bool] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_event(self, event: TaskEvent) -> None:
        if event.kind == "step_started" and event.step_index is not None:
            self.sim.begin_step(str(event.detail["instruction"]))
        elif event.kind == "step_finished" and event.step_index is not None:
            success, reason = self.sim.judge()
            with self.lock:
                self.outcomes[event.step_index] = (success, reason)
                if event.step_index not in self.autonomous:
                    self.autonomous[event.step_index] = event.detail.get("resolution") == "done"

    def outcome(self, step: int) -> tuple[bool, str] | None:
        with self.lock:
            return self.outcomes.get(step)


class SimulatedOperator:
    """Answers escalations after ``delay_s``, as a human at the console would, using the simulator's judge."""

    def __init__(
        self,
        escalations: EscalationQueue,
        teleop: TeleopChannel,
        sim: SimChannel,
        judge: StepJudge,
        instructions: list[str] | tuple[str, ...],
        delay_s: float = 1.0,
    ) -> None:
        self.escalations = escalations
        self.teleop = teleop
        self.sim = sim
        self.judge = judge
        self.instructions = list(instructions)
        self.delay_s = delay_s
        self.touches = 0
        self.decisions: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulated-operator", daemon=True)

    def start(self) -> SimulatedOperator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        answered: set[str] = set()
        while not self._stop.wait(0.05):
            for escalation in self.escalations.open():
                if escalation.id in answered:
                    continue
                if self._stop.wait(self.delay_s):
                    return
                answered.add(escalation.id)
                self._answer(escalation)

    def _answer(self, escalation) -> None:
        self.touches += 1
        if escalation.kind == "verify":
            failed = [s for s in escalation.steps if not (self.judge.outcome(s) or (True, ""))[0]]
            if not failed:
                self._decide(escalation.id, "approve", None)
                return
            step = failed[0]
            self._decide(escalation.id, "takeover", step)
            self.sim.begin_step(self.instructions[step])
            self._drive()
            return
        # Low confidence or stalled: the operator takes over this step and finishes it.
        self._decide(escalation.id, "takeover", escalation.step_index)
        self._drive()

    def _decide(self, escalation_id: str, action: str, step: int | None) -> None:
        self.decisions.append((escalation_id, action))
        self.escalations.decide(Decision(escalation_id=escalation_id, action=action, step_index=step,
                                         operator="simulated-operator"))

    def _drive(self, timeout_s: float = 120.0) -> None:
        """Feed the scripted expert's moves into the teleop channel, one per world tick, until done.

        The deadline is generous: past it the take-over never ends (nothing says "done"), and on a loaded 2-core
        machine a step driven by the expert has taken more than 20 s of wall time."""
        deadline = time.monotonic() + timeout_s
        while self.teleop.active_step is None and time.monotonic() < deadline:
            time.sleep(0.01)
        last_tick = -1
        while time.monotonic() < deadline and not self._stop.is_set() and self.teleop.active_step is not None:
            move = self.sim.expert_move_if_new(last_tick)
            if move is None:
                time.sleep(0.01)
                continue
            last_tick = int(move["tick"])
            grip = 1.0 if move["grip"] else 0.0
            self.teleop.put(TeleopCommand(dx=_clip(move["dx"]), dy=_clip(move["dy"]), grip=grip, done=move["done"]))
            if move["done"]:
                return


def run_task_with_simulated_operator(
    daemon, sim: SimChannel, task_id: str, instructions: list[str], delay_s: float = 0.1
) -> tuple[object, StepJudge]:
    """Run ``instructions`` as one task on ``daemon`` (a `vla_edge.service.Daemon`) with a `SimulatedOperator`
    answering its escalations; returns the task result and the judge that scored every step."""
    from vla_edge.task import TaskSpec

    judge = StepJudge(sim)
    operator = SimulatedOperator(daemon.escalations, daemon.teleop, sim, judge, instructions, delay_s).start()
    try:
        result = daemon.run_task(TaskSpec(task_id, tuple(instructions)), threading.Event(), events=judge.on_event)
    finally:
        operator.stop()
    return result, judge


def _clip(value: float, bound: float = 0.1) -> float:
    return float(max(-bound, min(bound, value)))
