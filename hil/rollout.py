"""Closed-loop evaluation of any chunk policy in the reference world (parity gates and benchmarks use it).

Receding horizon: query the policy, execute the first ``execute`` actions of its chunk, repeat. A step ends
when an executed action says ``done > 0.5`` or after ``max_ticks`` (a failure), and is then judged. In a
chain, a failed step is finished by the scripted expert (recorded as ``repaired``) so the next step starts
from the state the chain was generated for, which makes per-step success rates meaningful.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hil.expert import ScriptedExpert
from hil.tasks import Step, explain_step, make_chain
from hil.world import ACTION_DIM, TabletopWorld

ChunkPolicy = Callable[[np.ndarray, np.ndarray, str], np.ndarray]
"""``policy(image (96,96,3) uint8, state (3,) float32, instruction) -> chunk (H, 4)``."""

REPAIR_MAX_TICKS = 150


@dataclass
class StepResult:
    step: Step
    success: bool
    ticks: int
    done_signalled: bool
    reason: str = ""  # why the judge failed the step; empty on success
    repaired: bool = False  # the expert finished this failed step before the next one
    repair_succeeded: bool = False


@dataclass
class ChainResult:
    steps: list[StepResult]

    @property
    def chain_success(self) -> bool:
        return bool(self.steps) and all(s.success for s in self.steps)

    @property
    def step_success_rate(self) -> float:
        return sum(s.success for s in self.steps) / len(self.steps) if self.steps else 0.0


def run_step(
    world: TabletopWorld, step: Step, policy: ChunkPolicy, execute: int = 4, max_ticks: int = 80
) -> StepResult:
    """Run one step with ``policy`` in closed loop and judge it."""
    if execute < 1:
        raise ValueError(f"execute must be >= 1, got {execute}")
    bins_before = world.block_bins()
    ticks = 0
    done = False
    while ticks < max_ticks and not done:
        chunk = np.asarray(policy(world.render(), world.state(), step.instruction))
        if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or chunk.shape[0] < 1:
            raise ValueError(f"a policy must return a chunk of shape (H, {ACTION_DIM}); got {chunk.shape}")
        for action in chunk[:execute]:
            world.step(action)
            ticks += 1
            if action[3] > 0.5:
                done = True
                break
            if ticks >= max_ticks:
                break
    judgement = explain_step(world, step, bins_before)
    reason = judgement.reason if done or not judgement.success else ""
    if not done:
        reason = f"no done signal within {max_ticks} ticks" + (f"; {reason}" if reason else "")
    return StepResult(step=step, success=judgement.success and done, ticks=ticks, done_signalled=done, reason=reason)


def finish_with_expert(
    world: TabletopWorld, step: Step, rng: np.random.Generator, max_ticks: int = REPAIR_MAX_TICKS
) -> bool:
    """Let the scripted expert finish ``step`` from wherever the world is; True if the block ends in its bin."""
    expert = ScriptedExpert(rng)
    expert.reset(step)
    for _ in range(max_ticks):
        action = expert.act(world)
        world.step(action)
        if action[3] > 0.5:
            break
    return explain_step(world, step).success


def run_chain(
    world: TabletopWorld,
    chain: list[Step],
    policy: ChunkPolicy,
    execute: int = 4,
    max_ticks: int = 80,
    continue_after_failure: bool = True,
    repair_rng: np.random.Generator | None = None,
) -> ChainResult:
    """Run the steps of ``chain`` in order. After a failure, either stop or let the expert repair and go on."""
    rng = repair_rng if repair_rng is not None else np.random.default_rng(world.seed)
    results: list[StepResult] = []
    for step in chain:
        result = run_step(world, step, policy, execute=execute, max_ticks=max_ticks)
        results.append(result)
        if result.success:
            continue
        if not continue_after_failure:
            break
        result.repaired = True
        result.repair_succeeded = finish_with_expert(world, step, rng)
    return ChainResult(steps=results)


def evaluate(
    policy: ChunkPolicy | Callable[[TabletopWorld], ChunkPolicy],
    n_chains: int,
    seed: int,
    execute: int = 4,
    max_ticks: int = 80,
    n_steps: int = 10,
    continue_after_failure: bool = True,
    needs_world: bool = False,
) -> list[ChainResult]:
    """Run ``n_chains`` chains on fresh layouts drawn from ``seed`` (same seed, same layouts and chains).

    With ``needs_world=True``, ``policy`` is a factory called with each chain's world (for privileged
    policies such as ``ExpertChunkPolicy``).
    """
    results: list[ChainResult] = []
    for index in range(n_chains):
        rng = np.random.default_rng([seed, index])
        world = TabletopWorld(int(rng.integers(2**31)))
        chain = make_chain(rng, world, n_steps)
        chain_policy: ChunkPolicy = policy(world) if needs_world else policy  # type: ignore[call-arg,assignment]
        results.append(
            run_chain(
                world,
                chain,
                chain_policy,
                execute=execute,
                max_ticks=max_ticks,
                continue_after_failure=continue_after_failure,
                repair_rng=rng,
            )
        )
    return results


def summarise(results: list[ChainResult]) -> dict[str, float]:
    """Aggregate figures: step success rate, chain success rate, mean ticks per step, done rate."""
    steps = [s for chain in results for s in chain.steps]
    if not steps:
        return {"steps": 0, "step_success": 0.0, "chain_success": 0.0, "mean_ticks": 0.0, "done_rate": 0.0}
    return {
        "steps": len(steps),
        "step_success": sum(s.success for s in steps) / len(steps),
        "chain_success": sum(c.chain_success for c in results) / len(results),
        "mean_ticks": float(np.mean([s.ticks for s in steps])),
        "done_rate": sum(s.done_signalled for s in steps) / len(steps),
    }


def _measure_expert(n_chains: int, seed: int) -> dict[str, float]:
    """The scripted expert acting directly (as in demos), one action per tick."""
    successes = steps = 0
    ticks: list[int] = []
    for index in range(n_chains):
        rng = np.random.default_rng([seed, index])
        world = TabletopWorld(int(rng.integers(2**31)))
        expert = ScriptedExpert(rng)
        for step in make_chain(rng, world):
            bins_before = world.block_bins()
            expert.reset(step)
            count = 0
            while not expert.finished and count < REPAIR_MAX_TICKS:
                world.step(expert.act(world))
                count += 1
            successes += explain_step(world, step, bins_before).success
            steps += 1
            ticks.append(count)
    return {
        "steps": steps,
        "step_success": successes / steps,
        "mean_ticks": float(np.mean(ticks)),
        "max_ticks": float(np.max(ticks)),
    }


def _time_per_call_us(function: Callable[[], object], repeats: int) -> float:
    import time

    started = time.perf_counter_ns()
    for _ in range(repeats):
        function()
    return (time.perf_counter_ns() - started) / repeats / 1e3


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from hil.expert import ExpertChunkPolicy

    parser = argparse.ArgumentParser(
        prog="python -m hil.rollout", description="Measure the scripted expert and the world's speed (JSON out)."
    )
    parser.add_argument("--chains", type=int, default=100, help="10-step chains per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    world = TabletopWorld(args.seed)
    moving = [np.array([x, 0.5, 0.0, 0.0], dtype=np.float32) for x in (0.2, 0.8)]

    def expert_policy(w: TabletopWorld) -> ChunkPolicy:
        return ExpertChunkPolicy(w, np.random.default_rng(args.seed))

    figures = {
        "expert_direct": _measure_expert(args.chains, args.seed),
        "expert_chunked_h8_execute4": summarise(evaluate(expert_policy, args.chains, args.seed, needs_world=True)),
        "render_us": _time_per_call_us(world.render, 5000),
        "step_us": _time_per_call_us(lambda: world.step(moving[world.tick % 2]), 5000),
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
