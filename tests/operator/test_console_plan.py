"""The plan the operator sees: a chunk's K trajectories in image coordinates, on the live view and on the
escalation raised for a refused chunk; only where the action space maps onto the image."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vla_edge.bundle import load_bundle
from vla_edge.confidence import select_chunk
from vla_edge.operator.console import ConsoleModel
from vla_edge.operator.escalation import EscalationQueue, TeleopChannel
from vla_edge.operator.observer import ConsoleObserver
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.plan_view import ImagePlane, chosen_index
from vla_edge.scheduler import InferenceRequest, PlannedChunk
from vla_edge.task import TaskEvent
from vla_edge.types import ChunkSamples, Observation, SignalScore, Verdict


def planned(actions: np.ndarray, passed: bool) -> PlannedChunk:
    samples = ChunkSamples(actions, np.zeros(8, np.float32), time.monotonic_ns())
    verdict = Verdict(passed, (SignalScore("spread", 0.5 if passed else 2.0, 1.0, passed),),
                      "" if passed else "spread 2 > 1")
    request = InferenceRequest(Observation(np.zeros((96, 96, 3), np.uint8), np.zeros(3, np.float32), "go", 0), 7,
                               np.zeros((0, 4), np.float32))
    return PlannedChunk(request, samples, verdict, select_chunk(actions), 2.0)


def test_the_reference_action_space_maps_onto_the_image_and_others_do_not():
    space = load_bundle(REFERENCE_BUNDLE_DIR).manifest.action_space
    plane = ImagePlane.of(space.names, space.low, space.high)
    assert plane == ImagePlane(0, 1)
    # hil/world.py: workspace (x, y) → pixel (x * 96, y * 96), y down.
    np.testing.assert_allclose(plane.pixels(np.array([0.25, 0.75, 1.0, 0.0]), 96, 96), [24.0, 72.0])
    assert ImagePlane.of(["j1", "j2", "grip"], [0, 0, 0], [1, 1, 1]) is None  # joint space: no honest drawing
    assert ImagePlane.of(["x", "y"], [-0.5, -0.5], [0.5, 0.5]) is None  # metres around the base: not the image


def test_observer_puts_the_plan_on_the_live_view_and_on_the_refusals_escalation():
    rng = np.random.default_rng(0)
    actions = rng.uniform(0, 1, (8, 8, 4)).astype(np.float32)
    queue = EscalationQueue()
    model = ConsoleModel(queue, TeleopChannel())
    observer = ConsoleObserver(model, ImagePlane(0, 1))
    observer.on_chunk(planned(actions, passed=True))
    plan = model.state().plan
    assert plan is not None and plan.passed and len(plan.samples) == 8 and len(plan.chosen) == 8
    chosen = plan.chosen_index
    assert chosen == chosen_index(actions, select_chunk(actions))
    np.testing.assert_allclose(plan.chosen, plan.samples[chosen])
    assert plan.samples[3][2] == pytest.approx((round(float(actions[3, 2, 0]), 4), round(float(actions[3, 2, 1]), 4)))

    refused = planned(actions[::-1].copy(), passed=False)
    observer.on_chunk(refused)
    escalation = queue.raise_escalation("low_confidence", 0, "go", reason="spread")
    model.on_task_event(TaskEvent("escalated", 0, {"escalation_id": escalation.id,
                                                   "escalation_kind": "low_confidence"}, time.monotonic_ns()))
    view = model.open_escalations()
    assert [e.id for e in view.escalations] == [escalation.id]
    assert not view.plans[escalation.id].passed and view.plans[escalation.id].reason == "spread 2 > 1"
    # A verification question carries no plan; a decided escalation's plan is dropped.
    verify = queue.raise_escalation("verify", 1, "go")
    model.on_task_event(TaskEvent("escalated", 1, {"escalation_id": verify.id, "escalation_kind": "verify"},
                                  time.monotonic_ns()))
    assert set(model.open_escalations().plans) == {escalation.id}


def test_without_an_image_plane_only_the_verdict_is_shown():
    model = ConsoleModel(EscalationQueue(), TeleopChannel())
    ConsoleObserver(model, None).on_chunk(planned(np.zeros((4, 8, 4), np.float32), passed=True))
    state = model.state()
    assert state.plan is None and len(state.confidence) == 1


def test_camera_state_is_read_when_the_page_asks():
    model = ConsoleModel(EscalationQueue(), TeleopChannel())
    states = iter(["live", "stalled"])
    model.set_camera_status(lambda: next(states))
    assert model.state().camera == "live" and model.state().camera == "stalled"
