"""PolicyRunner on the committed reference bundle: real ONNX Runtime sessions, real graphs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vla_edge.bundle import load_bundle
from vla_edge.policy import PolicyInputError, PolicyRunner, choose_providers
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.tokenizer import UnknownWordError

INSTRUCTION = "put the red block in the left bin"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(REFERENCE_BUNDLE_DIR)


@pytest.fixture(scope="module")
def observation():
    from hil.world import TabletopWorld

    world = TabletopWorld(7)
    return world.render(), world.state()


@pytest.fixture()
def runner(bundle):
    return PolicyRunner(bundle, precision="fp32", intra_op_threads=1, seed=0)


def test_chunks_have_the_right_shape_and_stay_within_limits(runner, bundle, observation):
    image, state = observation
    chunk = runner.infer(image, state, INSTRUCTION, num_samples=8)
    m = bundle.manifest
    assert chunk.actions.shape == (8, m.horizon, m.action_dim)
    assert chunk.actions.dtype == np.float32
    assert np.all(chunk.actions >= np.asarray(m.action_space.low) - 1e-6)
    assert np.all(chunk.actions <= np.asarray(m.action_space.high) + 1e-6)
    assert chunk.embedding.shape == (m.embedding_dim,)
    assert set(chunk.timings_ms) == {"instruction", "encode", "denoise", "total"}
    assert chunk.timings_ms["total"] >= chunk.timings_ms["denoise"] > 0


def test_chunk_heads_from_the_gripper_toward_the_named_block(bundle):
    """A trained policy, not noise: its chunk moves toward the block it was told to pick."""
    from hil.world import TabletopWorld

    closer = tried = 0
    runner = PolicyRunner(bundle, precision="fp32", intra_op_threads=1, seed=0)
    for seed in range(20):
        world = TabletopWorld(seed)
        target = world.block_position("blue")
        here = world.gripper_position()
        if np.linalg.norm(here - target) < 0.15:
            continue  # already there: no direction to check
        bin_name = "bottom" if world.block_bins()["blue"] == "top" else "top"
        chunk = runner.infer(world.render(), world.state(), f"put the blue block in the {bin_name} bin", 4)
        waypoint = chunk.actions.mean(axis=0)[2, :2]
        tried += 1
        closer += np.linalg.norm(waypoint - target) < np.linalg.norm(here - target) - 0.05
    assert tried >= 8
    assert closer >= 0.9 * tried


def test_different_seeds_give_different_samples_and_same_seed_repeats(bundle, observation):
    image, state = observation
    a = PolicyRunner(bundle, precision="fp32", intra_op_threads=1, seed=1).infer(image, state, INSTRUCTION, 4)
    b = PolicyRunner(bundle, precision="fp32", intra_op_threads=1, seed=2).infer(image, state, INSTRUCTION, 4)
    c = PolicyRunner(bundle, precision="fp32", intra_op_threads=1, seed=1).infer(image, state, INSTRUCTION, 4)
    assert not np.allclose(a.actions, b.actions)
    np.testing.assert_allclose(a.actions, c.actions, atol=1e-6)
    # the K samples of one call differ from each other too
    assert np.ptp(a.actions[:, :, :2], axis=0).max() > 0


def test_prefix_is_frozen_and_the_chunk_continues_it(runner, observation):
    image, state = observation
    free = runner.infer(image, state, INSTRUCTION, num_samples=4)
    prefix = free.actions[0, :3].copy()
    prefix[:, :2] += 0.03  # a committed path that differs from what the policy would pick now
    chunk = runner.infer(image, state, INSTRUCTION, num_samples=4, prefix=prefix)
    np.testing.assert_allclose(chunk.actions[:, :3], np.broadcast_to(prefix, (4, 3, 4)), atol=1e-5)
    # the first free action continues from the prefix rather than jumping (max speed 0.08 per tick)
    jump = np.linalg.norm(chunk.actions[:, 3, :2] - prefix[-1, :2], axis=-1)
    assert float(jump.max()) < 0.2


def test_bad_prefix_is_refused(runner, observation):
    image, state = observation
    with pytest.raises(PolicyInputError, match="shorter than the horizon"):
        runner.infer(image, state, INSTRUCTION, prefix=np.zeros((8, 4), np.float32))
    with pytest.raises(PolicyInputError, match="prefix must be"):
        runner.infer(image, state, INSTRUCTION, prefix=np.zeros((2, 3), np.float32))


def test_instruction_features_are_cached_per_text(runner, observation):
    image, state = observation
    first = runner.set_instruction(INSTRUCTION)
    assert first > 0 and runner.cache_misses == 1
    assert runner.set_instruction(INSTRUCTION) == 0.0 and runner.cache_hits == 1
    chunk = runner.infer(image, state, INSTRUCTION, num_samples=2)
    assert chunk.timings_ms["instruction"] == 0.0
    runner.set_instruction("put the green block in the top bin")
    assert runner.cache_misses == 2


def test_unknown_word_names_the_word(runner):
    with pytest.raises(UnknownWordError, match="'purple'"):
        runner.set_instruction("put the purple block in the left bin")


def test_bad_images_and_states_are_refused_with_clear_errors(runner, observation):
    image, state = observation
    runner.set_instruction(INSTRUCTION)
    with pytest.raises(PolicyInputError, match="uint8"):
        runner.encode(image.astype(np.float32), state)
    with pytest.raises(PolicyInputError, match="H×W×3"):
        runner.encode(image[:, :, 0], state)
    with pytest.raises(PolicyInputError, match="state must have 3 values"):
        runner.encode(image, state[:2])
    with pytest.raises(PolicyInputError, match="non-finite"):
        runner.encode(image, np.array([np.nan, 0, 0], np.float32))
    with pytest.raises(PolicyInputError, match="num_samples"):
        runner.sample(runner.encode(image, state), 0)


def test_other_image_sizes_are_resized(runner, observation):
    import cv2

    image, state = observation
    runner.set_instruction(INSTRUCTION)
    big = cv2.resize(image, (192, 192), interpolation=cv2.INTER_NEAREST)
    same = runner.encode(image, state).embedding
    resized = runner.encode(big, state).embedding
    np.testing.assert_allclose(resized, same, atol=1e-3 * (1 + np.abs(same).max()))


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_variants_load_and_run_close_to_fp32(bundle, observation, precision):
    image, state = observation
    fp32 = PolicyRunner(bundle, precision="fp32", intra_op_threads=1)
    quant = PolicyRunner(bundle, precision=precision, intra_op_threads=1)
    noise = np.random.default_rng(3).standard_normal((4, 8, 4)).astype(np.float32)
    results = []
    for runner in (fp32, quant):
        runner.set_instruction(INSTRUCTION)
        results.append(runner.sample(runner.encode(image, state), 4, noise=noise).actions)
    assert results[1].shape == (4, 8, 4)
    assert float(np.abs(results[1] - results[0]).mean()) < 0.05
    assert quant.providers_in_use[-1] == "CPUExecutionProvider"


def test_unknown_precision_is_refused(bundle):
    from vla_edge.errors import BundleError

    with pytest.raises(BundleError, match="no 'fp16' variant"):
        PolicyRunner(bundle, precision="fp16")


def test_provider_choice_skips_unavailable_and_ends_with_cpu():
    assert choose_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])[-1] == "CPUExecutionProvider"
    assert "NoSuchExecutionProvider" not in choose_providers(["NoSuchExecutionProvider"])


def test_policy_module_does_not_import_torch():
    code = "import sys, vla_edge.policy, vla_edge.bundle, vla_edge.tokenizer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
