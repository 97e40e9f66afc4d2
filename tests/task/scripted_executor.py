"""A deterministic StepExecutor for tests: each step's outcomes follow a script; take-over follows the channel.

Also runnable as a worker process (``python scripted_executor.py STATE_DIR OUT_FILE``) for the crash test: it
runs a 12-step task with a short sleep per step and appends each step it starts to OUT_FILE.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np

from vla_edge.checkpoint import CheckpointStore
from vla_edge.config import TaskSettings
from vla_edge.operator.escalation import EscalationQueue, TeleopChannel
from vla_edge.task import StepOutcome, StepReport, TaskRunner, TaskSpec


class ScriptedExecutor:
    """``script[step]`` lists the outcomes of successive ``run_step`` calls on that step; then "done"."""

    def __init__(self, script: dict[int, list[StepOutcome]] | None = None, step_sleep_s: float = 0.0) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.step_sleep_s = step_sleep_s
        self.calls: list[tuple[int, bool]] = []
        self.holds: list[str] = []
        self.teleop_steps: list[int] = []
        self.position = np.array([0.5, 0.5])
        self.grip = 0.0
        self._attempts: dict[int, int] = defaultdict(int)

    def run_step(self, step_index, instruction, stop, *, override_once=False) -> StepReport:
        self.calls.append((step_index, override_once))
        if self.step_sleep_s:
            if stop.wait(self.step_sleep_s):
                return StepReport("stopped", reason="stop")
        planned = self.script.get(step_index, [])
        attempt = self._attempts[step_index]
        self._attempts[step_index] += 1
        outcome: StepOutcome = planned[attempt] if attempt < len(planned) else "done"
        confidence = {"spread": 0.9 if outcome == "low_confidence" else 0.1}
        frame = np.full((24, 32, 3), 40 * (step_index % 6), dtype=np.uint8)
        return StepReport(outcome, frame=frame, confidence=confidence, reason=f"scripted {outcome}", ticks=5)

    def teleoperate(self, step_index, instruction, commands: TeleopChannel, stop) -> StepReport:
        self.teleop_steps.append(step_index)
        ticks = 0
        while not stop.is_set():
            got = commands.wait_input(0.05)
            if got is not None:
                self.position = np.clip(self.position + [got.dx, got.dy], 0.0, 1.0)
                if got.grip is not None:
                    self.grip = got.grip
                ticks += 1
            if commands.done:
                return StepReport("done", reason="operator done", ticks=ticks)
        return StepReport("stopped", reason="stop", ticks=ticks)

    def hold(self, reason: str) -> None:
        self.holds.append(reason)

    def latest_frame(self):
        return np.zeros((24, 32, 3), dtype=np.uint8)


CRASH_TASK = TaskSpec("crash-demo", tuple(f"put the red block in the left bin (#{i})" for i in range(12)))


class _LoggingExecutor(ScriptedExecutor):
    """Logs each step it starts. ``hold_at``: that step starts and never ends, so the crash test's kill lands there
    whatever the machine's load (with a sleep per step alone, a starved test could see the worker finish first)."""

    def __init__(self, out: Path, hold_at: int | None = None) -> None:
        super().__init__(step_sleep_s=0.15)
        self.out = out
        self.hold_at = hold_at

    def run_step(self, step_index, instruction, stop, *, override_once=False):
        with self.out.open("a") as handle:
            handle.write(f"{step_index}\n")
        if step_index == self.hold_at:
            threading.Event().wait()  # until killed
        return super().run_step(step_index, instruction, stop, override_once=override_once)


def main(state_dir: str, out_file: str, hold_at: int | None = None) -> int:
    runner = TaskRunner(
        CRASH_TASK,
        _LoggingExecutor(Path(out_file), hold_at),
        EscalationQueue(),
        CheckpointStore(Path(state_dir)),
        TaskSettings(checkpoint_every=3, state_dir=Path(state_dir)),
    )
    result = runner.run(threading.Event())
    with Path(out_file).open("a") as handle:
        handle.write(f"{result.status} resumed_from={result.resumed_from}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None))
