"""The executor observer that turns what each tick and each planned chunk did into metrics."""

from __future__ import annotations

import numpy as np

from vla_edge.executor import PlanAheadWait, TickObserver
from vla_edge.scheduler import PlannedChunk, TickDecision
from vla_edge.telemetry.metrics import DaemonMetrics
from vla_edge.types import Frame


def tick_outcome(decision: TickDecision, sent: np.ndarray | None, intervention: bool) -> str:
    """The ``outcome`` label of ``vla_edge_ticks_total``: teleop, action, or hold_<reason>."""
    if intervention:
        return "teleop"
    return "action" if sent is not None else f"hold_{decision.hold_reason}"


class MetricsObserver(TickObserver):
    def __init__(self, metrics: DaemonMetrics) -> None:
        self.metrics = metrics
        self._last_frame_seq: int | None = None

    def on_tick(self, decision: TickDecision, lateness_ns: int, sent: np.ndarray | None, frame: Frame | None,
                state: np.ndarray | None, instruction: str, intervention: bool) -> None:
        self.metrics.record_tick(tick_outcome(decision, sent, intervention), lateness_ns / 1e9)
        if frame is not None and frame.seq != self._last_frame_seq:
            self._last_frame_seq = frame.seq
            self.metrics.frames.inc()

    def on_plan_ahead(self, wait: PlanAheadWait) -> None:
        self.metrics.plan_ahead.labels(wait.feedback).inc()

    def on_chunk(self, planned: PlannedChunk) -> None:
        self.metrics.record_chunk()
        self.metrics.record_timings_ms(planned.samples.timings_ms)
        self.metrics.record_stage("plan", planned.latency_ms / 1e3)
        verdict = planned.verdict
        self.metrics.record_confidence([(s.name, s.value, s.threshold) for s in verdict.signals], verdict.passed)
        if planned.request.attempt > 0:  # a re-sample of a refused chunk (recovery.resample_tries)
            self.metrics.record_resample(planned.admitted)
