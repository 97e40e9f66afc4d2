"""The arithmetic of the action samplers a bundle declares: flow-matching Euler, DDPM and DDIM. numpy only.

DDPM and DDIM follow diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` (what LeRobot's Diffusion Policy calls)
line by line, in float32 as they compute with a float32 model; ``tests/policy/test_samplers.py`` checks them against
diffusers itself on the same model outputs and noise. The graph calls live in ``vla_edge.policy``; here only the
schedule, the update and the inpainting of a committed prefix.

Real-time chunking (Black et al., "Real-Time Execution of Action Chunking Flow Policies", arXiv 2506.07339): a
chunk planned while the previous one still runs continues it. The actions that run while the chunk is computed are
a *frozen prefix*, inpainted exactly at every step; the rest of the previous chunk after them is a *soft target*
with weights that decay to 0 (`guidance_weights`). Flow samplers follow it with the paper's guidance
(`flow_guidance`), diffusion samplers by weighted replacement of the noised target (`DiffusionSchedule.soft_inpaint`), and
single-pass policies by blending (`blend_towards`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vla_edge.bundle_schema import Diffusion, FlowMatchingEuler


# ---- flow matching ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowSchedule:
    """Times fed to the step graph and the update coefficient of each Euler step."""

    times: np.ndarray  # (steps,) float32: t_i (already × time_scale)
    progress: np.ndarray  # (steps,) float64: s_i = i / steps, the fraction of the way from noise to the chunk
    coefficient: float  # x ← x + coefficient · v

    @classmethod
    def of(cls, spec: FlowMatchingEuler) -> FlowSchedule:
        steps = spec.steps
        progress = np.arange(steps, dtype=np.float64) / steps
        # Computed as the policies do in float: t = time_start + i · dt with dt = (time_end − time_start) / steps.
        dt = (spec.time_end - spec.time_start) / steps
        times = np.asarray([spec.time_start + i * dt for i in range(steps)], dtype=np.float32) * np.float32(
            spec.time_scale
        )
        sign = -1.0 if spec.velocity == "noise_minus_action" else 1.0
        # v = ε − a: x moves by −v/steps per step toward a (= SmolVLA's x + dt·v with dt = −1/steps).
        return cls(times=times, progress=progress, coefficient=sign * abs(dt) / abs(spec.time_end - spec.time_start))


def flow_inpaint(progress: float, noise: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """The committed prefix at flow progress s (0: noise, 1: data): (1 − s)·noise + s·prefix."""
    return ((1.0 - progress) * noise + progress * prefix).astype(np.float32)


# ---- real-time chunking: soft guidance over the rest of the previous chunk --------------------------------------
GUIDANCE_CLIP = 5.0  # β, the paper's clip on the guidance weight (its value: 5)


def guidance_weights(rows: int) -> np.ndarray:
    """The soft-mask weights of the ``rows`` actions after the frozen prefix (RTC eq. 5): with c_j = (rows − j) /
    (rows + 1), W_j = c_j·(e^{c_j} − 1)/(e − 1): just under 1 next to the prefix, decaying to near 0 at the end of
    the previous chunk (the new chunk owns everything after it)."""
    if rows <= 0:
        return np.zeros(0, np.float32)
    c = (rows - np.arange(rows, dtype=np.float64)) / (rows + 1)
    return (c * np.expm1(c) / math.expm1(1.0)).astype(np.float32)


def guidance_scale(progress: float, clip: float = GUIDANCE_CLIP) -> float:
    """min(β, (1 − τ)/(τ·r²)) with r² = (1 − τ)²/(τ² + (1 − τ)²), τ the flow progress (0: noise, 1: data)."""
    if progress <= 0.0:
        return clip
    if progress >= 1.0:
        return 0.0
    r2 = (1.0 - progress) ** 2 / (progress**2 + (1.0 - progress) ** 2)
    return float(min(clip, (1.0 - progress) / (progress * r2)))


def guidance_target(model_shape: tuple[int, int], offset: int, action_dim: int, prefix: np.ndarray | None,
                    guide: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The target chunk Y and the weights W over the model's [horizon, padded dim] chunk: the frozen prefix (W = 1)
    and the guided rows after it (decaying W) from row ``offset`` (the bundle's execute_start), 0 elsewhere."""
    target = np.zeros(model_shape, np.float32)
    weights = np.zeros(model_shape, np.float32)
    row = offset
    for rows, w in ((prefix, None), (guide, "decay")):
        if rows is None or rows.shape[0] == 0:
            continue
        n = rows.shape[0]
        target[row : row + n, :action_dim] = rows
        weights[row : row + n, :action_dim] = 1.0 if w is None else guidance_weights(n)[:, None]
        row += n
    return target, weights


def predicted_chunk(x: np.ndarray, step: np.ndarray, progress: float, steps: int) -> np.ndarray:
    """Â = x + (1 − τ)·u: where the flow would end from x at progress τ with its current velocity u, u being
    ``step·steps`` (``step`` is what one Euler step adds)."""
    return (x + (1.0 - progress) * steps * step).astype(np.float32)


def guidance_step(probe_prediction: np.ndarray, prediction: np.ndarray, progress: float, steps: int,
                  clip: float = GUIDANCE_CLIP) -> np.ndarray:
    """What real-time chunking's guidance adds to one Euler step, from a Jacobian-vector product taken by a secant.

    The paper's correction (RTC eq. 2–4, ΠGDM) is scale(τ)·(Y − Â)ᵀ·diag(W)·∂Â/∂x, a vector-Jacobian product
    through the network, which needs a backward pass ONNX Runtime does not have. For a denoiser that predicts the
    posterior mean, ∂Â/∂x is a posterior covariance times a scalar (Tweedie's formula), hence symmetric, so the
    product equals the Jacobian-vector product J·g with g = W ⊙ (Y − Â), which a forward pass gives:
    J·g ≈ Â(x + g) − Â(x) (a secant of step 1, robust to int8 graphs whose activations are quantized at run time).
    The direction g is the previous Euler step's, so the probe x + g runs in the same batch as x (one step-graph
    call of 2K samples per step instead of two calls). Coupling through J is the point: the residual on the frozen
    prefix moves the rows after it, which is how the new chunk comes to continue the old one.
    ``probe_prediction`` = Â(x + g), ``prediction`` = Â(x)."""
    return (guidance_scale(progress, clip) / steps * (probe_prediction - prediction)).astype(np.float32)


def blend_towards(x: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """W·target + (1 − W)·x row by row (single-pass policies: the previous chunk's rest blended in)."""
    w = weights[None, :, None]
    return (w * target[None] + (1.0 - w) * x).astype(np.float32)


# ---- DDPM / DDIM -----------------------------------------------------------------------------------------------
def _alpha_bar_cosine(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_of(spec: Diffusion) -> np.ndarray:
    """diffusers' beta schedules (float32, as ``torch.tensor(..., dtype=torch.float32)``)."""
    n = spec.num_train_timesteps
    if spec.beta_schedule == "linear":
        return np.linspace(spec.beta_start, spec.beta_end, n, dtype=np.float32)
    if spec.beta_schedule == "scaled_linear":
        return (np.linspace(spec.beta_start**0.5, spec.beta_end**0.5, n, dtype=np.float32) ** 2).astype(np.float32)
    # squaredcos_cap_v2: betas_for_alpha_bar with the cosine transform, max_beta 0.999
    betas = [min(1 - _alpha_bar_cosine((i + 1) / n) / _alpha_bar_cosine(i / n), 0.999) for i in range(n)]
    return np.asarray(betas, dtype=np.float32)


def timesteps_of(spec: Diffusion) -> np.ndarray:
    """diffusers' ``set_timesteps``: the integer timesteps of the reverse process, first to last."""
    t, n = spec.num_train_timesteps, spec.num_inference_steps
    if spec.timestep_spacing == "linspace":
        steps = np.linspace(0, t - 1, n).round()[::-1].copy().astype(np.int64)
    elif spec.timestep_spacing == "leading":
        ratio = t // n
        steps = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + spec.steps_offset
    else:  # trailing
        ratio = t / n
        steps = np.round(np.arange(t, 0, -ratio)).astype(np.int64) - 1
    return steps


@dataclass(frozen=True)
class DiffusionStep:
    """Everything one reverse step needs, precomputed (float32 scalars as diffusers' tensors hold them)."""

    timestep: int
    alpha_prod: np.float32  # ᾱ_t
    alpha_prod_prev: np.float32  # ᾱ at the previous timestep (1 or ᾱ_0 past the end)
    noise_std: np.float32  # the std of the noise added after this step (0: none drawn)
    draws_noise: bool


class DiffusionSchedule:
    """A DDPM or DDIM reverse process for one bundle: the steps and the update rule."""

    def __init__(self, spec: Diffusion) -> None:
        self.spec = spec
        betas = betas_of(spec)
        alphas = (np.float32(1.0) - betas).astype(np.float32)
        self.alphas_cumprod = np.cumprod(alphas, dtype=np.float32)
        self.timesteps = timesteps_of(spec)
        one = np.float32(1.0)
        final = one if spec.kind == "ddpm" or spec.set_alpha_to_one else self.alphas_cumprod[0]
        jump = spec.num_train_timesteps // spec.num_inference_steps
        steps = []
        for t in self.timesteps.tolist():
            prev = t - jump
            a_t = self.alphas_cumprod[t]
            a_prev = self.alphas_cumprod[prev] if prev >= 0 else final
            if spec.kind == "ddpm":
                current_beta = one - a_t / a_prev
                variance = np.float32(max((one - a_prev) / (one - a_t) * current_beta, np.float32(1e-20)))
                if spec.variance_type == "fixed_large":
                    std = np.float32(np.sqrt(current_beta))
                elif spec.variance_type == "fixed_small_log":
                    std = np.float32(np.exp(np.float32(0.5) * np.log(variance)))
                else:
                    std = np.float32(np.sqrt(variance))
                draws = t > 0
            else:
                variance = (one - a_prev) / (one - a_t) * (one - a_t / a_prev)
                std = np.float32(spec.eta * np.sqrt(variance))
                draws = spec.eta > 0
            steps.append(DiffusionStep(t, np.float32(a_t), np.float32(a_prev), std if draws else np.float32(0), draws))
        self.steps: tuple[DiffusionStep, ...] = tuple(steps)

    @property
    def noisy_steps(self) -> int:
        """How many steps draw noise (the length of ``step_noise`` a caller passes)."""
        return sum(1 for s in self.steps if s.draws_noise)

    def _x0_eps(self, step: DiffusionStep, x: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a_t = step.alpha_prod
        b_t = np.float32(1.0) - a_t
        sa, sb = np.float32(np.sqrt(a_t)), np.float32(np.sqrt(b_t))
        kind = self.spec.prediction_type
        if kind == "epsilon":
            x0, eps = (x - sb * out) / sa, out
        elif kind == "sample":
            x0 = out
            eps = (x - sa * x0) / sb
        else:  # v_prediction
            x0 = sa * x - sb * out
            eps = sa * out + sb * x
        if self.spec.clip_sample:
            r = np.float32(self.spec.clip_sample_range)
            x0 = np.clip(x0, -r, r)
        return x0.astype(np.float32), eps.astype(np.float32)

    def step(self, index: int, x: np.ndarray, out: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """x at the next (less noisy) timestep from the model output ``out`` at step ``index``."""
        step = self.steps[index]
        x0, eps = self._x0_eps(step, x, out)
        one = np.float32(1.0)
        a_t, a_prev = step.alpha_prod, step.alpha_prod_prev
        if self.spec.kind == "ddpm":
            b_t, b_prev = one - a_t, one - a_prev
            current_alpha = a_t / a_prev
            current_beta = one - current_alpha
            c0 = np.float32(np.sqrt(a_prev) * current_beta / b_t)
            cx = np.float32(np.sqrt(current_alpha) * b_prev / b_t)
            prev = c0 * x0 + cx * x
        else:
            std = step.noise_std
            direction = np.float32(np.sqrt(one - a_prev - std * std)) * eps
            prev = np.float32(np.sqrt(a_prev)) * x0 + direction
        if step.draws_noise:
            if noise is None:
                raise ValueError(f"step {index} (timestep {step.timestep}) draws noise but none was given")
            prev = prev + step.noise_std * noise
        return prev.astype(np.float32)

    def inpaint(self, index: int, noise: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        """The committed prefix noised to step ``index``'s level: sqrt(ᾱ_t)·prefix + sqrt(1 − ᾱ_t)·noise."""
        a_t = self.steps[index].alpha_prod
        return (np.sqrt(a_t) * prefix + np.sqrt(np.float32(1.0) - a_t) * noise).astype(np.float32)

    def soft_inpaint(self, index: int, x: np.ndarray, noise: np.ndarray, target: np.ndarray,
                     weights: np.ndarray) -> np.ndarray:
        """Inpainting by replacement, weighted: each guided row becomes W·(target noised to this step) + (1 − W)·x
        (W = 1 is the frozen prefix's exact replacement)."""
        w = weights[None, :, None]
        return (w * self.inpaint(index, noise, target) + (1.0 - w) * x).astype(np.float32)
