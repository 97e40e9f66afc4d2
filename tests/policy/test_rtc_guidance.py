"""Real-time chunking in the samplers: the weights and guidance scale of the paper, and what guidance does to each
kind of sampler run by the real `PolicyRunner` (flow: guided through the model's own Jacobian; DDPM/DDIM: weighted
replacement; single pass: blending)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hil.wander_bundle import WanderSpec, build_wander_bundle
from tests.policy import tiny_bundles as tiny
from vla_edge.bundle import load_bundle
from vla_edge.policy import PolicyInputError, PolicyRunner, SamplerNoise
from vla_edge.samplers import GUIDANCE_CLIP, guidance_scale, guidance_target, guidance_weights

DDIM = {"kind": "ddim", "num_train_timesteps": 100, "num_inference_steps": 10, "beta_schedule": "squaredcos_cap_v2",
        "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": True,
        "clip_sample_range": 1.0}
DDPM = {**DDIM, "kind": "ddpm", "num_inference_steps": 20}


def _frame(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_soft_mask_weights_follow_the_paper():
    w = guidance_weights(4)
    c = (4 - np.arange(4)) / 5
    np.testing.assert_allclose(w, c * (np.exp(c) - 1) / (math.e - 1), rtol=1e-6)
    assert np.all(np.diff(w) < 0) and 0 < w[-1] < w[0] < 1
    assert guidance_weights(0).shape == (0,)


def test_guidance_scale_is_clipped_at_the_ends():
    assert guidance_scale(0.0) == GUIDANCE_CLIP and guidance_scale(1.0) == 0.0
    assert guidance_scale(0.5) == pytest.approx(2.0)  # (1 − τ)/(τ·r²) with r² = 1/2
    assert guidance_scale(0.95) == GUIDANCE_CLIP


def test_guidance_target_puts_prefix_then_guide_in_the_model_window():
    prefix, guide = np.full((2, 3), 1.0, np.float32), np.full((3, 3), 2.0, np.float32)
    target, weights = guidance_target((10, 4), 1, 3, prefix, guide)
    assert np.all(target[1:3, :3] == 1.0) and np.all(weights[1:3, :3] == 1.0)
    assert np.all(target[3:6, :3] == 2.0)
    np.testing.assert_allclose(weights[3:6, 0], guidance_weights(3))
    assert weights[0].sum() == 0 and weights[6:].sum() == 0 and weights[:, 3].sum() == 0  # padded dim untouched


@pytest.fixture(scope="module")
def wander(tmp_path_factory) -> PolicyRunner:
    bundle = load_bundle(build_wander_bundle(tmp_path_factory.mktemp("wander"), WanderSpec(horizon=30)))
    runner = PolicyRunner(bundle, "fp32", intra_op_threads=1, seed=1, warm_up_samples=1)
    runner.set_instruction("wander")
    return runner


def test_guided_flow_continues_the_frozen_prefix(wander: PolicyRunner):
    """A prefix of 8 actions from one sample; 64 new samples from the same state continue it. With the frozen prefix
    alone (inpainting by replacement) the row after it jumps; with guidance it follows on (median jump in max_delta
    units, measured: 0.16 guided, 0.53 frozen prefix only, 1.09 without the prefix)."""
    encoded = wander.encode(_frame(8, 8), np.array([0.5, 0.5, 0.0], np.float32))
    old = wander.sample(encoded, 1).actions[0]
    d, k = 8, 64
    prefix, guide = old[:d], old[d:d + 2]
    frozen = wander.sample(encoded, k, prefix=prefix).actions
    guided = wander.sample(encoded, k, prefix=prefix, guide=guide).actions
    for actions in (frozen, guided):
        np.testing.assert_allclose(actions[:, :d], np.broadcast_to(prefix, (k, d, 4)), atol=1e-5)

    def jump(actions: np.ndarray) -> float:
        return float(np.median(np.abs(actions[:, d, :2] - prefix[-1, :2]).max(axis=1)) / 0.08)

    assert jump(guided) < 0.5 * jump(frozen), (jump(guided), jump(frozen))
    # Guidance sharpens, it does not replace sampling: the samples still differ further on.
    assert guided[:, -1, :2].std(axis=0).min() > 0.02


def test_unguided_sampling_is_unchanged_by_the_guidance_code(wander: PolicyRunner):
    encoded = wander.encode(_frame(8, 8), np.array([0.4, 0.6, 0.0], np.float32))
    noise = np.random.default_rng(2).standard_normal((3, 30, 4)).astype(np.float32)
    a = wander.sample(encoded, 3, noise=noise).actions
    b = wander.sample(encoded, 3, noise=noise, guide=None).actions
    np.testing.assert_array_equal(a, b)


def test_guidance_follows_the_model_not_a_blind_pull(tmp_path: Path):
    """The tiny flow bundle's velocity lands on its target whatever x is: its prediction does not depend on x, so
    the Jacobian is 0 and guidance must change nothing (an identity-Jacobian pull would)."""
    runner = PolicyRunner(load_bundle(tiny.build_flow_bundle(tmp_path / "flow", 0.0, "action_minus_noise")),
                          "fp32", intra_op_threads=1, seed=3)
    runner.set_instruction("pick up the red cube")
    frames = {"top": _frame(8, 8), "wrist": _frame(6, 6)}
    encoded = runner.encode(frames, np.array([0.2, -0.4], np.float32))
    noise = np.random.default_rng(4).standard_normal((2, tiny.FLOW_H, tiny.FLOW_A_PAD)).astype(np.float32)
    plain = runner.sample(encoded, 2, noise=noise).actions
    guided = runner.sample(encoded, 2, noise=noise, guide=plain[0, :3] + 1.0).actions
    np.testing.assert_allclose(guided, plain, atol=1e-4)


@pytest.mark.parametrize("sampler", [DDIM, DDPM], ids=["ddim", "ddpm"])
def test_diffusion_replaces_the_guided_rows_by_weight(sampler: dict, tmp_path: Path):
    runner = PolicyRunner(load_bundle(tiny.build_diffusion_bundle(tmp_path / "dp", sampler)), "fp32",
                          intra_op_threads=1)
    runner.set_instruction("task")
    encoded = runner.encode(_frame(5, 7), np.array([1.0, 1.0], np.float32))
    rng = np.random.default_rng(5)
    initial = rng.standard_normal((2, tiny.DP_H, tiny.DP_A)).astype(np.float32)
    noisy = runner._diffusion.noisy_steps  # DDPM draws noise at every step but the last: the same draws both times
    steps = rng.standard_normal((noisy, 2, tiny.DP_H, tiny.DP_A)).astype(np.float32) if noisy else None
    assert (noisy > 0) == (sampler["kind"] == "ddpm")
    plain = runner.sample(encoded, 2, noise=SamplerNoise(initial, steps)).actions
    guide = np.full((3, tiny.DP_A), 0.9, np.float32)
    guided = runner.sample(encoded, 2, noise=SamplerNoise(initial, steps), guide=guide).actions
    before, after = np.abs(plain[:, :3] - guide).mean(axis=(0, 2)), np.abs(guided[:, :3] - guide).mean(axis=(0, 2))
    pulled = 1.0 - after / before
    assert np.all(pulled > 0.05) and pulled[0] > pulled[1] > pulled[2], pulled  # hardest next to the prefix
    # This tiny model treats every entry on its own: the rows after the guided ones are untouched.
    np.testing.assert_allclose(guided[:, 3:], plain[:, 3:], atol=1e-5)


@pytest.mark.parametrize("sampler", [DDIM, DDPM], ids=["ddim", "ddpm"])
def test_diffusion_inpaints_the_frozen_prefix_by_replacement(sampler: dict, tmp_path: Path):
    """The frozen prefix comes out exactly as committed, with DDPM's per-step noise draws as with DDIM; this tiny
    model couples no rows, so the rows after the prefix are what the unconstrained sample says (the coupling itself
    is what the flow test above measures on a model whose rows depend on each other)."""
    runner = PolicyRunner(load_bundle(tiny.build_diffusion_bundle(tmp_path / "dp", sampler)), "fp32",
                          intra_op_threads=1)
    runner.set_instruction("task")
    encoded = runner.encode(_frame(5, 7), np.array([1.0, 1.0], np.float32))
    rng = np.random.default_rng(6)
    initial = rng.standard_normal((3, tiny.DP_H, tiny.DP_A)).astype(np.float32)
    noisy = runner._diffusion.noisy_steps
    steps = rng.standard_normal((noisy, 3, tiny.DP_H, tiny.DP_A)).astype(np.float32) if noisy else None
    plain = runner.sample(encoded, 3, noise=SamplerNoise(initial, steps)).actions
    prefix = np.array([[0.25, 0.5, 0.75], [0.3, 0.55, 0.8]], np.float32)
    frozen = runner.sample(encoded, 3, prefix=prefix, noise=SamplerNoise(initial, steps)).actions
    np.testing.assert_allclose(frozen[:, :2], np.broadcast_to(prefix, (3, 2, tiny.DP_A)), atol=1e-5)
    assert np.abs(plain[:, :2] - prefix).max() > 0.05  # the prefix is not what the policy would have said
    np.testing.assert_allclose(frozen[:, 2:], plain[:, 2:], atol=1e-5)


def test_single_pass_blends_the_guide_in(tmp_path: Path):
    runner = PolicyRunner(load_bundle(tiny.build_single_pass_bundle(tmp_path / "act")), "fp32", intra_op_threads=1)
    runner.set_instruction("anything")
    encoded = runner.encode(_frame(30, 40), np.array([2.0, -1.0], np.float32))
    plain = runner.sample(encoded, 1).actions[0]
    prefix, guide = np.full((1, 3), 1.0, np.float32), np.full((2, 3), 4.0, np.float32)
    blended = runner.sample(encoded, 1, prefix=prefix, guide=guide).actions[0]
    w = guidance_weights(2)[:, None]
    np.testing.assert_allclose(blended[0], prefix[0], atol=1e-6)
    np.testing.assert_allclose(blended[1:3], w * guide + (1 - w) * plain[1:3], atol=1e-5)
    np.testing.assert_allclose(blended[3:], plain[3:], atol=1e-6)


def test_a_bad_guide_is_refused(wander: PolicyRunner):
    encoded = wander.encode(_frame(8, 8), np.array([0.5, 0.5, 0.0], np.float32))
    with pytest.raises(PolicyInputError, match="guide must be"):
        wander.sample(encoded, 1, guide=np.zeros((2, 3), np.float32))
    with pytest.raises(PolicyInputError, match="non-finite"):
        wander.sample(encoded, 1, guide=np.full((2, 4), np.nan, np.float32))
