"""The step-end rule and the action layout come from the manifest, not from the reference's [x, y, grip, done]."""

from __future__ import annotations

import numpy as np
import pytest

from vla_edge.bundle import load_bundle
from vla_edge.bundle_schema import upgrade_v1
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.step_end import ActionLayout, StepEndTracker


def _reference_layout() -> ActionLayout:
    manifest = upgrade_v1(load_bundle(REFERENCE_BUNDLE_DIR, verify=False).manifest, ["gripper_x", "gripper_y", "grip"])
    return ActionLayout.of(manifest)


def _layout(**rule) -> ActionLayout:
    base = dict(action_names=("shoulder", "elbow", "gripper"), state_names=("shoulder", "elbow", "gripper"),
                horizon=5, done_index=None, done_threshold=0.5, max_chunks=None, max_seconds=None,
                success_threshold=None, success_every_chunks=1, external=False)
    base.update(rule)
    return ActionLayout(**base)  # type: ignore[arg-type]


def test_reference_layout_reads_done_by_name() -> None:
    layout = _reference_layout()
    assert layout.done_index == 3 and layout.grip_index == 2
    assert layout.is_done(np.array([0.2, 0.3, 0.0, 0.9], np.float32))
    assert not layout.is_done(np.array([0.2, 0.3, 0.0, 0.4], np.float32))
    start = layout.initial_action(np.array([0.4, 0.6, 1.0, 1.0], np.float32), np.zeros(4), np.ones(4))
    np.testing.assert_allclose(start, [0.4, 0.6, 1.0, 0.0])  # the measured position, done back to 0
    assert layout.state_from_measured([0.4, 0.6, 1.0, 1.0]).tolist() == pytest.approx([0.4, 0.6, 1.0])
    moved = layout.teleop_action(start, 0.05, -0.1, 0.0, done=True)
    np.testing.assert_allclose(moved, [0.45, 0.5, 0.0, 1.0], atol=1e-6)


def test_max_chunks_counts_executed_actions() -> None:
    tracker = StepEndTracker(_layout(max_chunks=2), started_ns=0)
    for _ in range(9):
        tracker.on_action(np.zeros(3, np.float32))
    assert tracker.check(0) is None
    tracker.on_action(np.zeros(3, np.float32))
    assert tracker.check(0) == "2 chunk(s) executed (step_end.max_chunks)"


def test_max_seconds_and_success_detector() -> None:
    tracker = StepEndTracker(_layout(max_seconds=1.5), started_ns=10**9)
    assert tracker.check(2 * 10**9) is None and "1.5 s elapsed" in (tracker.check(int(2.6e9)) or "")
    detector = StepEndTracker(_layout(success_threshold=0.7, success_every_chunks=2), started_ns=0)
    detector.on_chunk(0.9)  # chunk 1: not a checked chunk
    assert detector.check(0) is None
    detector.on_chunk(0.6)
    assert detector.check(0) is None
    detector.on_chunk(0.65)
    detector.on_chunk(0.8)  # chunk 4: checked, above the threshold
    assert detector.check(0) == "success detector 0.80 > 0.7"


def test_generic_arm_teleop_holds_other_joints() -> None:
    layout = _layout(max_chunks=1)
    assert layout.grip_index == 2 and layout.done_index is None
    start = layout.initial_action(np.array([0.1, -0.2, 0.7], np.float32), -np.ones(3), np.ones(3))
    mixed = _layout(state_names=("gripper", "shoulder"))
    assert mixed.state_from_measured([0.1, -0.2, 0.7]).tolist() == pytest.approx([0.7, 0.1])  # by name
    with pytest.raises(ValueError, match="state 'velocity' cannot be measured"):
        _layout(state_names=("a", "b", "c", "velocity")).state_source  # noqa: B018
    np.testing.assert_allclose(start, [0.1, -0.2, 0.7])
    np.testing.assert_allclose(layout.teleop_action(start, 0.1, 0.0, None, done=True), [0.2, -0.2, 0.7], atol=1e-6)
