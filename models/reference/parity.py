"""Parity gate for quantized variants: open-loop action error against fp32 and closed-loop per-step success.

Action error: the same held-out observations and the *same initial noise* go through fp32 and the variant, so
the difference is what quantization does (physical units, mean over every entry of every K×H×A chunk).
Closed loop: ``hil.rollout.evaluate`` runs the variant's ``PolicyRunner`` (K = 1 sample per query, the first
4 actions of each chunk executed) on the same layouts and chains as fp32.
A variant fails when its success drops more than ``success_margin`` below fp32 or its action error exceeds
``action_error_bound``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_edge.bundle import Bundle, ParityFigures
from vla_edge.policy import PolicyRunner

SUCCESS_MARGIN = 0.05  # at most 5 percentage points below fp32
ACTION_ERROR_BOUND = 0.03  # mean absolute action error vs fp32, workspace units (3 % of the table)
EXECUTE = 4  # actions of each chunk executed before the next query, as the scheduler does by default


@dataclass(frozen=True)
class HeldOut:
    """Held-out observations for the open-loop comparison."""

    images: np.ndarray  # (M, 96, 96, 3) uint8
    states: np.ndarray  # (M, 3)
    instructions: list[str]


@dataclass(frozen=True)
class ClosedLoop:
    steps: int
    chains: int
    per_step_success: float
    done_rate: float
    mean_ticks: float


def closed_loop(runner: PolicyRunner, n_chains: int, seed: int, n_steps: int = 10) -> ClosedLoop:
    from hil.rollout import evaluate, summarise

    results = evaluate(runner, n_chains=n_chains, seed=seed, execute=EXECUTE, n_steps=n_steps)
    summary = summarise(results)
    return ClosedLoop(
        steps=int(summary["steps"]),
        chains=n_chains,
        per_step_success=float(summary["step_success"]),
        done_rate=float(summary["done_rate"]),
        mean_ticks=float(summary["mean_ticks"]),
    )


def sample_on(runner: PolicyRunner, held_out: HeldOut, num_samples: int, seed: int) -> np.ndarray:
    """(M, K, H, A) chunks for every held-out observation, from noise fixed by ``seed`` and the row."""
    m = runner.manifest
    chunks = []
    for row, (image, state, text) in enumerate(zip(held_out.images, held_out.states, held_out.instructions, strict=True)):
        noise = np.random.default_rng([seed, row]).standard_normal((num_samples, m.horizon, m.action_dim))
        runner.set_instruction(text)
        encoded = runner.encode(image, state)
        chunks.append(runner.sample(encoded, num_samples, noise=noise.astype(np.float32)).actions)
    return np.stack(chunks)


def action_error(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    diff = np.abs(candidate - reference)
    return float(diff.mean()), float(diff.max())


def parity_figures(
    reference_chunks: np.ndarray,
    candidate_chunks: np.ndarray,
    fp32_loop: ClosedLoop,
    candidate_loop: ClosedLoop,
    success_margin: float = SUCCESS_MARGIN,
    action_error_bound: float = ACTION_ERROR_BOUND,
) -> ParityFigures:
    mae, worst = action_error(reference_chunks, candidate_chunks)
    passed = candidate_loop.per_step_success >= fp32_loop.per_step_success - success_margin and mae <= action_error_bound
    return ParityFigures(
        held_out_observations=int(reference_chunks.shape[0]),
        action_mae=mae,
        action_max_abs_error=worst,
        action_error_bound=action_error_bound,
        closed_loop_steps=candidate_loop.steps,
        closed_loop_chains=candidate_loop.chains,
        per_step_success=candidate_loop.per_step_success,
        success_margin=success_margin,
        passed=passed,
    )


def runner_for(bundle: Bundle, precision: str, seed: int, threads: int = 2) -> PolicyRunner:
    return PolicyRunner(bundle, precision=precision, providers=["CPUExecutionProvider"], intra_op_threads=threads, seed=seed)


def failures(figures: dict[str, ParityFigures], fp32_success: float) -> list[str]:
    """One line per variant that fails the gate, saying by how much."""
    lines = []
    for precision, f in figures.items():
        if f.passed:
            continue
        why = []
        if f.per_step_success < fp32_success - f.success_margin:
            why.append(
                f"per-step success {f.per_step_success:.1%} is more than {f.success_margin:.0%} below fp32's "
                f"{fp32_success:.1%}"
            )
        if f.action_mae > f.action_error_bound:
            why.append(f"action error {f.action_mae:.4f} exceeds the bound {f.action_error_bound:.4f}")
        lines.append(f"{precision}: " + "; ".join(why))
    return lines
