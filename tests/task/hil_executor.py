"""A StepExecutor on the real simulated tabletop (hil/): the scripted expert is the step's "policy".

Faults are injected per (step, attempt): the policy reports low confidence at a given tick and the arm holds,
as the daemon's executor does when a chunk fails its verdict. Every tick is recorded with the LeRobot recorder;
operator-driven ticks carry ``intervention=True``. One episode per step. Used by the task and browser tests.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import numpy as np

from hil.expert import ScriptedExpert
from hil.tasks import explain_step, parse_instruction
from hil.world import MAX_STEP, TabletopWorld
from vla_edge.operator.escalation import TeleopChannel
from vla_edge.recorder import EpisodeRecorder
from vla_edge.task import StepReport, Verification


class HilExecutor:
    def __init__(
        self,
        world: TabletopWorld,
        recorder: EpisodeRecorder | None = None,
        *,
        faults: dict[tuple[int, int], int] | None = None,
        max_ticks: int = 150,
        tick_s: float = 0.0,
        seed: int = 0,
        on_confidence=None,
    ) -> None:
        self.world = world
        self.recorder = recorder
        self.faults = dict(faults or {})  # (step, attempt) -> tick at which confidence drops
        self.max_ticks = max_ticks
        self.tick_s = tick_s
        self.lock = threading.Lock()  # guards the world between the executor thread and readers
        self.rng = np.random.default_rng(seed)
        self.on_confidence = on_confidence  # (ratios, passed) per chunk, as the daemon feeds the console
        self.holds: list[str] = []
        self.overrides: list[int] = []
        self.applied_inputs = 0
        self._attempts: dict[int, int] = defaultdict(int)
        self._bins_before: dict[int, dict] = {}

    # -- StepExecutor --------------------------------------------------------------------------------------------

    def run_step(self, step_index, instruction, stop, *, override_once=False) -> StepReport:
        step = parse_instruction(instruction)
        attempt = self._attempts[step_index]
        self._attempts[step_index] += 1
        with self.lock:
            self._bins_before.setdefault(step_index, self.world.block_bins())
        if override_once:
            self.overrides.append(step_index)
        fault_tick = None if override_once else self.faults.get((step_index, attempt))
        expert = ScriptedExpert(self.rng, noise=0.0)
        expert.reset(step)
        for tick in range(self.max_ticks):
            if stop.is_set():
                self.hold("stop")
                return StepReport("stopped", ticks=tick)
            if tick % 4 == 0 and self.on_confidence is not None:
                # Stand-in figures (the expert has no samples): a calm wave, and a spike when confidence drops.
                failing = fault_tick is not None and tick + 4 > fault_tick
                ratios = {"spread": 1.55 if failing else 0.45 + 0.1 * np.sin(tick / 5), "ood": 0.6 + 0.05 * np.cos(tick / 7)}
                self.on_confidence(ratios, not failing)
            if tick == fault_tick:
                with self.lock:
                    frame = self.world.render()
                self.hold("low confidence")
                return StepReport("low_confidence", frame, {"spread": 0.31, "ood": 4.2}, "spread 0.31 > 0.2", tick)
            with self.lock:
                image, state = self.world.render(), self.world.state()
                action = expert.act(self.world)
                self.world.step(action)
            self._record(image, state, action, False, instruction)
            self._pace()
            if action[3] > 0.5:
                self._end_episode(step_index, instruction)
                return StepReport("done", ticks=tick + 1)
        with self.lock:
            frame = self.world.render()
        self.hold("stalled")
        return StepReport("stalled", frame, {}, f"no done signal in {self.max_ticks} ticks", self.max_ticks)

    def teleoperate(self, step_index, instruction, commands: TeleopChannel, stop) -> StepReport:
        with self.lock:
            self._bins_before.setdefault(step_index, self.world.block_bins())
            target = self.world.gripper_position()
            grip = float(self.world.grip_closed())
        ticks = 0
        while not stop.is_set():
            got = commands.wait_input(max(self.tick_s, 0.01))
            if got is not None:
                target = np.clip(target + np.clip([got.dx, got.dy], -MAX_STEP, MAX_STEP), 0.0, 1.0)
                grip = got.grip if got.grip is not None else grip
            action = np.array([target[0], target[1], grip, 0.0], dtype=np.float32)
            with self.lock:
                image, state = self.world.render(), self.world.state()
                self.world.step(action)
            self._record(image, state, action, True, instruction)
            ticks += 1
            if got is not None:
                self.applied_inputs += 1
            if commands.done:
                self._end_episode(step_index, instruction)
                return StepReport("done", reason="operator said done", ticks=ticks)
        self.hold("stop")
        return StepReport("stopped", ticks=ticks)

    def hold(self, reason: str) -> None:
        self.holds.append(reason)
        with self.lock:
            self.world.hold()

    def latest_frame(self):
        with self.lock:
            return self.world.render()

    # -- verification (the hil judge) ------------------------------------------------------------------------------

    def verify(self, step_index, instruction, report) -> Verification:
        with self.lock:
            judgement = explain_step(self.world, parse_instruction(instruction), self._bins_before.get(step_index))
        return Verification(judgement.success, judgement.reason)

    # -- internals ------------------------------------------------------------------------------------------------

    def _record(self, image, state, action, intervention, instruction) -> None:
        if self.recorder is not None:
            self.recorder.add_frame(image, state, action, intervention, instruction)

    def _end_episode(self, step_index, instruction) -> None:
        self._bins_before.pop(step_index, None)
        if self.recorder is not None:
            self.recorder.end_episode(success=True)

    def _pace(self) -> None:
        if self.tick_s:
            time.sleep(self.tick_s)
