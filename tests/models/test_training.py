"""Training really learns: a short run on real expert demos lowers the flow-matching loss; the one build command
works end to end in its quick mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.reference.data import (  # noqa: E402
    Demos,
    chunk_index,
    concatenate,
    generate_demos,
    generate_recovery_demos,
    target_block_positions,
)
from models.reference.train import TrainConfig, held_out_loss, train  # noqa: E402


@pytest.fixture(scope="module")
def tiny_demos(tmp_path_factory) -> Demos:
    return generate_demos(3, seed=5, cache=tmp_path_factory.mktemp("demos") / "demos.npz")


def test_chunk_targets_stay_within_their_step():
    episode = np.array([0, 0, 0, 0, 0, 1, 1])
    step = np.array([0, 0, 0, 1, 1, 0, 0])
    index = chunk_index(episode, step, horizon=4)
    assert index[0].tolist() == [0, 1, 2, 2]
    assert index[3].tolist() == [3, 4, 4, 4]
    assert index[5].tolist() == [5, 6, 6, 6]


def test_block_target_is_where_the_expert_grasps_and_releases(tiny_demos: Demos):
    targets = target_block_positions(tiny_demos)
    closes = tiny_demos.actions[:, 2] > 0.5
    grasp = int(np.argmax(closes))  # first grasp of the first step
    np.testing.assert_allclose(targets[: grasp + 1], np.broadcast_to(tiny_demos.states[grasp, :2], (grasp + 1, 2)))
    carried = grasp + 2
    assert closes[carried]
    np.testing.assert_allclose(targets[carried], tiny_demos.states[carried, :2])


def test_recovery_demos_contain_states_plain_demos_never_show(tiny_demos: Demos):
    recovery = generate_recovery_demos(4, seed=1, perturb=0.2)

    def most_reopenings_in_a_step(demos: Demos) -> int:
        # state says closed, the expert's label opens: once per step (the drop) in plain demos; more often where
        # a perturbation closed the gripper on nothing or dropped the block early
        reopen = (demos.states[:, 2] > 0.5) & (demos.actions[:, 2] < 0.5)
        key = demos.episode_index * 100 + demos.step_index
        return max(int(reopen[key == k].sum()) for k in np.unique(key))

    assert most_reopenings_in_a_step(tiny_demos) == 1
    assert most_reopenings_in_a_step(recovery) > 1
    both = concatenate(tiny_demos, recovery)
    assert len(both) == len(tiny_demos) + len(recovery)
    assert [both.instructions[i] for i in both.instruction_index[len(tiny_demos) :]] == [
        recovery.instructions[i] for i in recovery.instruction_index
    ]


@pytest.mark.slow
def test_short_training_run_reduces_the_loss(tiny_demos: Demos):
    cfg = TrainConfig(iterations=60, batch_size=16, noise_per_obs=2, lr=2e-3, warmup=5, log_every=10, threads=1)
    result = train(tiny_demos, cfg)
    first, last = result.history[0][1], result.history[-1][1]
    assert last < 0.6 * first, result.history
    assert np.isfinite(result.held_out_loss)


@pytest.mark.slow
def test_quick_build_writes_a_valid_bundle(tmp_path: Path):
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [sys.executable, "-m", "models.build", "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from vla_edge.bundle import load_bundle

    manifest = load_bundle(out).manifest
    assert set(manifest.variants) == {"fp32", "int8", "int4"}
    assert all(v.parity is not None for v in manifest.variants.values())
    assert manifest.training is not None and manifest.training.iterations == 30


def test_a_time_budget_anneals_the_learning_rate_by_the_deadline():
    from models.reference.train import TrainConfig, _lr_at

    by_steps = TrainConfig(iterations=10_000, max_seconds=None)
    by_time = TrainConfig(iterations=10_000, max_seconds=100.0)
    # Early in the step count but at the deadline: the timed run is already at the floor (0.1 × lr).
    assert _lr_at(1_000, by_time, elapsed_s=100.0) == pytest.approx(0.1 * by_time.lr)
    assert _lr_at(1_000, by_steps, elapsed_s=100.0) > 0.9 * by_steps.lr
    # Halfway through the time and a tenth through the steps: the later of the two sets the schedule.
    assert _lr_at(1_000, by_time, elapsed_s=50.0) == pytest.approx(_lr_at(5_100, by_steps))
