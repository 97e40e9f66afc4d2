"""The shipped checkpoint verifier (models/bundles/reference-verifier) on scenes of the reference world it never saw:
a step done right, the same frames with a wrong instruction, a block left on the table; and its bundle checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hil.expert import ScriptedExpert
from hil.tasks import parse_instruction
from hil.world import TabletopWorld
from vla_edge.errors import BundleError
from vla_edge.paths import REFERENCE_VERIFIER_DIR
from vla_edge.verifier import CheckpointVerifier


@pytest.fixture(scope="module")
def verifier() -> CheckpointVerifier:
    return CheckpointVerifier(REFERENCE_VERIFIER_DIR)


def _do(world: TabletopWorld, instruction: str, seed: int = 0) -> None:
    expert = ScriptedExpert(np.random.default_rng(seed))
    expert.reset(parse_instruction(instruction))
    for _ in range(200):
        world.step(expert.act(world))
        if expert.finished:
            return
    raise AssertionError("the expert did not finish")


def _scenes(seed: int):
    """A fresh layout (never a training or calibration chain), the red block moved to the bin it is not in."""
    world = TabletopWorld(90_000 + seed)
    target = next(b for b in ("left", "right", "top", "bottom") if world.block_bins()["red"] != b)
    before = world.render()
    instruction = f"put the red block in the {target} bin"
    _do(world, instruction, seed)
    return world, before, instruction, target


@pytest.mark.parametrize("seed", range(4))
def test_a_step_done_right_is_accepted_and_the_wrong_instruction_is_not(verifier, seed):
    world, before, instruction, target = _scenes(seed)
    after = world.render()
    right = verifier.probability((instruction,), before, after)
    wrong_bin = next(b for b in ("left", "right", "top", "bottom") if b != target)
    wrong = verifier.probability((f"put the red block in the {wrong_bin} bin",), before, after)
    assert right > 0.5 > wrong, (right, wrong)


@pytest.mark.parametrize("seed", range(4))
def test_a_block_left_outside_every_bin_is_not_as_expected(verifier, seed):
    world, before, instruction, _ = _scenes(seed)
    world.arrange({"red": (0.5, 0.5)}, gripper=(0.2, 0.2))  # dropped in the middle of the table
    assert verifier.probability((instruction,), before, world.render()) < 0.5


def test_verify_says_sure_only_outside_the_calibrated_band_and_unsure_without_frames(verifier):
    world, before, instruction, _ = _scenes(7)
    verdict = verifier.verify((instruction,), before, world.render())
    p = verdict.p
    assert verdict.ok == (p > verifier.accept_threshold) and verdict.sure == (
        p > verifier.accept_threshold or p < verifier.reject_threshold)
    no_frame = verifier.verify((instruction,), None, world.render())
    assert not no_frame.sure and not no_frame.ok
    unknown = verifier.verify(("put the purple block in the left bin",), before, world.render())
    assert not unknown.sure and "cannot judge" in unknown.reason
    too_many = verifier.verify((instruction,) * (verifier.manifest.max_steps + 1), before, world.render())
    assert not too_many.sure


def test_a_changed_graph_or_manifest_is_refused(tmp_path):
    copy = tmp_path / "verifier"
    shutil.copytree(REFERENCE_VERIFIER_DIR, copy)
    graph = copy / "verifier.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        CheckpointVerifier(copy)
    shutil.copy(REFERENCE_VERIFIER_DIR / "verifier.onnx", graph)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["accept_threshold"] = 0.1
    manifest["reject_threshold"] = 0.9
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="overlap"):
        CheckpointVerifier(copy)
    with pytest.raises(BundleError, match="not found"):
        CheckpointVerifier(tmp_path / "nowhere")
