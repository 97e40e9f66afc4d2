"""The executor observer that keeps the console current: each chunk's verdict and, where the action space maps
onto the camera image, its K sampled trajectories and the chosen one (`vla_edge.plan_view`)."""

from __future__ import annotations

import time

import numpy as np

from vla_edge.executor import TickObserver
from vla_edge.operator.console import ConsoleModel, PlanView
from vla_edge.plan_view import ImagePlane, chosen_index
from vla_edge.scheduler import PlannedChunk


def plan_view(planned: PlannedChunk, plane: ImagePlane, t_s: float) -> PlanView:
    samples = np.round(plane.fractions(planned.samples.actions).astype(np.float64), 4)
    chosen = np.round(plane.fractions(planned.chunk).astype(np.float64), 4)
    return PlanView(
        t_s=round(t_s, 3),
        start_tick=planned.request.start_tick,
        samples=[[(float(x), float(y)) for x, y in trajectory] for trajectory in samples],
        chosen=[(float(x), float(y)) for x, y in chosen],
        chosen_index=chosen_index(planned.samples.actions, planned.chunk),
        passed=planned.verdict.passed,
        reason=planned.verdict.reason,
    )


class ConsoleObserver(TickObserver):
    def __init__(self, model: ConsoleModel, plane: ImagePlane | None) -> None:
        self.model = model
        self.plane = plane
        self._t0_ns = time.monotonic_ns()

    def on_chunk(self, planned: PlannedChunk) -> None:
        self.model.add_verdict(planned.verdict)
        if self.plane is not None:
            self.model.set_plan(plan_view(planned, self.plane, (time.monotonic_ns() - self._t0_ns) / 1e9))
