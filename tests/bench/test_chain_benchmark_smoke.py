"""The chain benchmark's bookkeeping on tiny runs with the real policy (ONNX Runtime), monitor and task runner,
and its --quick command end to end (table, JSON, PNG)."""

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from bench.chain_benchmark import main, run_gated
from hil.world import TabletopWorld
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.simulation import (
    SimulatedRobot,
    base_monitor,
    chain_setup,
    open_policy,
    run_autonomous,
    simulation_settings,
)

# Another bundle (e.g. a quick build) can be tried with VLA_EDGE_TEST_BUNDLE=/path.
BUNDLE_DIR = Path(os.environ.get("VLA_EDGE_TEST_BUNDLE", REFERENCE_BUNDLE_DIR))


@pytest.fixture(scope="module")
def opened():
    bundle, policy = open_policy(BUNDLE_DIR, "int8", threads=1)
    return bundle, policy, base_monitor(bundle)


def _settings(bundle, **overrides):
    return simulation_settings(bundle.manifest, num_samples=4, step_timeout_s=6.0, **overrides)


def _robot(opened, world, **overrides):
    bundle, policy, monitor = opened
    return SimulatedRobot(world, policy, monitor, _settings(bundle, **overrides), np.random.default_rng(0),
                          np.random.default_rng(1))


def _never(monitor):
    return monitor.with_thresholds({"spread": np.inf, "consistency": np.inf, "ood": np.inf, "limits": np.inf,
                                     "jerk": np.inf})


def _always(monitor):
    return monitor.with_thresholds({"spread": -1.0})


def test_a_gate_that_rejects_everything_hands_every_step_to_the_operator(opened, tmp_path):
    bundle, policy, monitor = opened
    setup = chain_setup(7, 0, n_steps=5)
    chain = run_gated(setup, policy, _always(monitor), _settings(bundle), tmp_path, operator_delay_s=5.0)
    assert chain.low_confidence_actuations == 0
    assert chain.chunks_actuated == 0  # the first chunk of each step is refused before it moves anything
    assert chain.touches["low_confidence"] == 5
    # Checkpoints after steps 4 and 5 (the end); the operator finished every step, so both are approved.
    assert chain.touches["verify"] == 2 and chain.decisions["verify:approve"] == 2
    assert chain.success and chain.final_state_ok and chain.status == "completed"
    operator_ticks = sum(r.ticks for r in chain.runs if r.driver == "operator")
    assert chain.operator_seconds == pytest.approx(7 * 5.0 + operator_ticks / 10.0)


def test_a_gate_that_never_fires_leaves_failures_to_the_checkpoints(opened, tmp_path):
    bundle, policy, monitor = opened
    setup = chain_setup(7, 1, n_steps=4)
    chain = run_gated(setup, policy, _never(monitor), _settings(bundle), tmp_path, operator_delay_s=1.0)
    policy_runs = [r for r in chain.runs if r.driver == "policy"]
    # Steps the policy called done but got wrong: only the checkpoint can find those (a stall escalates itself).
    failed = [r for r in policy_runs if r.outcome == "done" and r.success is not True]
    assert chain.touches.get("low_confidence", 0) == 0 and chain.chunks_flagged == 0
    assert chain.gate_misses == sum(1 for r in policy_runs if r.outcome == "done" and not r.success)
    assert chain.touches.get("stalled", 0) == sum(1 for r in policy_runs if r.outcome == "stalled")
    if failed:  # the checkpoint found them: one take-over per repaired step, then a fresh verification
        assert chain.decisions.get("verify:takeover", 0) >= 1
    assert chain.decisions.get("verify:approve", 0) == 1
    assert chain.success == chain.final_state_ok


def test_gated_and_autonomous_runs_agree_until_the_first_intervention(opened, tmp_path):
    bundle, policy, monitor = opened
    setup = chain_setup(7, 2, n_steps=4)
    free = run_autonomous(setup, policy, _never(monitor), _settings(bundle))
    gated = run_gated(setup, policy, _never(monitor), _settings(bundle), tmp_path, operator_delay_s=1.0)
    first_runs = [r for r in gated.runs if r.driver == "policy"]
    for autonomous_step, gated_step in zip(free.steps, first_runs, strict=False):
        # Same layout, same noise: the same chunks, the same signal values and the same verdict of the judge.
        assert autonomous_step.ticks == gated_step.ticks
        assert autonomous_step.signal_max() == pytest.approx(gated_step.signal_max())
        assert autonomous_step.success == gated_step.success
        if not autonomous_step.success:
            break


def test_stop_ends_a_step_without_moving(opened):
    world = TabletopWorld(3)
    before = world.snapshot()
    robot = _robot(opened, world)
    stop = threading.Event()
    stop.set()
    report = robot.run_step(0, "put the red block in the left bin", stop)
    assert report.outcome == "stopped" and world.snapshot() == before and robot.arm.actions == 0


@pytest.mark.slow
def test_quick_benchmark_writes_table_json_and_png(tmp_path, capsys):
    out = tmp_path / "chain"
    assert main(["--quick", "--chains", "2", "--bundle", str(BUNDLE_DIR), "--samples", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "chain_benchmark.json").read_text())
    assert summary["chains"] == 2 and summary["gated"]["low_confidence_chunks_actuated"] == 0
    assert set(summary["auroc"]) == {"spread", "consistency", "ood", "limits", "jerk"}
    assert summary["gated"]["verifications_per_chain"] >= 3  # checkpoints after steps 4, 8 and 10
    png = (out / "chain_benchmark.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert len(json.loads((out / "chains.json").read_text())) == 2
    assert "| chain success |" in (out / "chain_benchmark.md").read_text()
    assert "chain success" in capsys.readouterr().out
    # The evaluation table over seeds reads these very files (here: the run and a copy of it under another seed).
    from bench.seed_spread import table

    text = table([summary, {**summary, "seed": summary["seed"] + 1}])
    for name, figures in summary["configs"].items():
        v = f"{figures['chain_success']:.1%}"
        assert f"| {name} | chain success | {v} | {v} | {v} | {v}–{v} |" in text, name
        t = f"{figures['touches_per_chain']:.2f}"
        assert f"| {name} | operator touches per chain | {t} | {t} | {t} | {t}–{t} |" in text, name


def test_a_block_off_the_reachable_table_is_placed_by_hand_and_counted(opened):
    world = TabletopWorld(0)
    snapshot = world.snapshot()
    snapshot["blocks"]["green"]["position"] = [-0.07, 0.47]  # where a policy once pushed it: out of the gripper's reach
    world.restore(snapshot)
    robot = _robot(opened, world)
    run = robot.repair_scene(3, {"green": "left"})
    assert run.success and world.block_bins()["green"] == "left"
    assert robot.hand_placements == 1 and run.ticks >= 1
