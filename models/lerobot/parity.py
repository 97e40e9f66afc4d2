"""The import gate: LeRobot's own ``predict_action_chunk`` vs vla-edge's runner (``vla_edge.policy``, the code that
runs on the robot) on the same weights, the same observations and the same noise.

* Observations: frames with structure (gradients and blobs) and states spread over the dataset's range, different
  per observation, so the policy's output moves (the spread is reported: a policy whose output barely varies
  passes a cosine check trivially).
* Noise: drawn here and given to both: the initial sample (flow matching, DDPM/DDIM) through LeRobot's ``noise``
  argument and the runner's ``SamplerNoise``; for DDPM every step's variance noise too — LeRobot draws it inside
  diffusers' scheduler with ``randn_tensor``, which is replaced for the call by a function that hands out the
  pre-drawn steps in order (and checks their shapes).
* Observation history (Diffusion Policy, n_obs_steps = 2): each frame goes through LeRobot's preprocessor on its
  own, the frames are stacked as LeRobot's queues stack them; the runner sees the same frames through ``observe``
  one control period apart.
* Compared: the executed window (LeRobot returns it; the runner returns it in physical units, turned back into
  normalised units with the bundle's own inverse), in LeRobot's normalised action units.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.lerobot.fixtures import random_observation
from models.lerobot.metrics import ParityFigures, parity_figures
from models.lerobot.sections import frame_to_chw01

TASKS = ("pick up the red block and put it in the left bin", "open the top drawer", "push the blue cube to the right",
         "stack the green cup on the yellow plate")


@dataclass
class Observation:
    """One parity observation: per history step, frames by LeRobot image key and a raw state; the instruction."""

    frames: list[dict[str, np.ndarray]]  # oldest first; uint8 H×W×3 per image key
    states: list[np.ndarray]
    task: str


@dataclass
class Noise:
    initial: np.ndarray  # [1, model_horizon, A_pad]
    steps: np.ndarray | None  # [noisy steps, 1, model_horizon, A_pad] (DDPM), else None


def make_observations(ck: Any, count: int, history: int, seed: int) -> list[Observation]:
    from models.lerobot.fixtures import Shape

    cfg = ck.config
    rng = np.random.default_rng(seed)
    cams = {key: tuple(cfg.image_features[key].shape) for key in cfg.image_features}
    shape = Shape(cameras=cams, state_dim=cfg.robot_state_feature.shape[0] if cfg.robot_state_feature else 0,
                  action_dim=cfg.action_feature.shape[0])
    stats = ck.stats.get("observation.state", {})
    out = []
    for i in range(count):
        frames, states = [], []
        for _ in range(history):
            frames.append(random_observation(shape, rng))
            if "min" in stats and "max" in stats:
                lo, hi = stats["min"], stats["max"]
                states.append(rng.uniform(lo, hi).astype(np.float32))
            elif "mean" in stats:
                states.append((stats["mean"] + stats["std"] * rng.standard_normal(shape.state_dim)).astype(np.float32))
            else:
                states.append(rng.uniform(-1, 1, shape.state_dim).astype(np.float32))
        tasks = ck.env_words.tasks if ck.env_words is not None and ck.env_words.tasks else TASKS
        out.append(Observation(frames=frames, states=states, task=tasks[i % len(tasks)]))
    return out


def lerobot_input(ck: Any, frames: dict[str, np.ndarray], state: np.ndarray, task: str) -> dict[str, Any]:
    """One raw observation as LeRobot's robot loop hands it to the preprocessor."""
    import torch

    obs: dict[str, Any] = {key: torch.from_numpy(frame_to_chw01(frame)) for key, frame in frames.items()}
    if ck.config.robot_state_feature is not None:
        obs["observation.state"] = torch.from_numpy(np.asarray(state, dtype=np.float32))
    if getattr(ck.config, "env_state_feature", None) is not None and ck.env_words is not None:
        obs["observation.environment_state"] = torch.from_numpy(ck.env_words.vector(task))  # as the recorder wrote it
    obs["task"] = task
    return obs


def preprocess(ck: Any, frames: dict[str, np.ndarray], state: np.ndarray, task: str) -> dict[str, Any]:
    return ck.preprocessor(lerobot_input(ck, frames, state, task))


@contextlib.contextmanager
def diffusers_step_noise(steps: np.ndarray | None) -> Iterator[list[int]]:
    """While active, diffusers' DDPM/DDIM schedulers take their per-step variance noise from ``steps`` in order."""
    import torch
    from diffusers.schedulers import scheduling_ddim, scheduling_ddpm

    used = [0]
    originals = (scheduling_ddpm.randn_tensor, scheduling_ddim.randn_tensor)

    def handout(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **_: Any) -> Any:
        if steps is None:
            raise RuntimeError("the scheduler drew step noise, but none was prepared")
        noise = torch.from_numpy(np.ascontiguousarray(steps[used[0]]))
        if tuple(noise.shape) != tuple(shape):
            raise RuntimeError(f"step noise {used[0]} has shape {tuple(noise.shape)}, the scheduler wants {tuple(shape)}")
        used[0] += 1
        return noise.to(device=device, dtype=dtype)

    scheduling_ddpm.randn_tensor = scheduling_ddim.randn_tensor = handout
    try:
        yield used
    finally:
        scheduling_ddpm.randn_tensor, scheduling_ddim.randn_tensor = originals


def valid_tokens(tokens: Any, mask: Any) -> list[int]:
    """The prompt's real tokens (padding dropped): what must be identical in LeRobot and the runtime."""
    return [int(t) for t, m in zip(np.asarray(tokens).reshape(-1), np.asarray(mask).reshape(-1), strict=True) if m]


def lerobot_tokens(ck: Any, observation: Observation) -> list[int] | None:
    batch = preprocess(ck, observation.frames[-1], observation.states[-1], observation.task)
    if "observation.language.tokens" not in batch:
        return None
    return valid_tokens(batch["observation.language.tokens"], batch["observation.language.attention_mask"])


def lerobot_chunk(ck: Any, observation: Observation, noise: Noise) -> np.ndarray:
    """LeRobot's own chunk (executed window, normalised units) for one observation: [n, A]."""
    import torch

    policy = ck.policy
    policy.reset()
    batches = [preprocess(ck, f, s, observation.task) for f, s in zip(observation.frames, observation.states,
                                                                        strict=True)]
    kind = ck.policy_type
    with torch.no_grad():
        if kind == "act":
            chunk = policy.predict_action_chunk(batches[-1])[:, : ck.config.n_action_steps]
        elif kind == "diffusion":
            batch = {k: torch.stack([b[k] for b in batches], dim=1) for k in batches[-1]
                     if isinstance(batches[-1][k], torch.Tensor) and k.startswith("observation.")}
            with diffusers_step_noise(noise.steps) as used:
                chunk = policy.predict_action_chunk(batch, noise=torch.from_numpy(noise.initial))
            expected = 0 if noise.steps is None else noise.steps.shape[0]
            if used[0] != expected:
                raise RuntimeError(f"LeRobot drew {used[0]} step noises, {expected} were prepared")
        else:  # smolvla, pi0, pi05: flow matching, the noise is an argument
            chunk = policy.predict_action_chunk(batches[-1], noise=torch.from_numpy(noise.initial))
            chunk = chunk[:, : ck.config.n_action_steps]
    return chunk[0].detach().float().numpy()


def make_noise(runner_spec: Any, seed: int) -> Noise:
    """The initial sample and DDPM's step noise, shaped as the bundle's sampler needs them (K = 1)."""
    from vla_edge.bundle_schema import Diffusion

    rng = np.random.default_rng(seed)
    shape = (1, runner_spec.action.model_horizon, runner_spec.model_action_dim)
    initial = rng.standard_normal(shape, dtype=np.float32)
    steps = None
    sampler = runner_spec.sampler
    if isinstance(sampler, Diffusion) and (sampler.kind == "ddpm" or sampler.eta > 0):
        noisy = sampler.num_inference_steps - 1  # the last step (t = 0) adds no noise
        steps = rng.standard_normal((noisy, *shape), dtype=np.float32)
    return Noise(initial=initial, steps=steps)


def runner_chunk(runner: Any, observation: Observation, noise: Noise,
                 interval_ns: int) -> tuple[np.ndarray, list[int] | None]:
    """vla-edge's chunk for the same observation and noise ([n, A], normalised units) and its prompt tokens."""
    from vla_edge.policy import SamplerNoise

    views = {view.lerobot_key: view.name for view in runner.manifest.observation.cameras}
    runner.reset()
    runner.set_instruction(observation.task)
    t0 = 1_000_000_000
    for i, (frames, state) in enumerate(zip(observation.frames[:-1], observation.states[:-1], strict=True)):
        runner.observe({views[k]: f for k, f in frames.items()}, state, t0 + i * interval_ns)
    t_last = t0 + (len(observation.frames) - 1) * interval_ns
    encoded = runner.encode({views[k]: f for k, f in observation.frames[-1].items()}, observation.states[-1], t_last)
    samples = runner.sample(encoded, 1, noise=SamplerNoise(initial=noise.initial, steps=noise.steps), clip=False)
    tokens = None
    if "language.tokens" in encoded.values and "language.attention_mask" in encoded.values:
        tokens = valid_tokens(encoded.values["language.tokens"], encoded.values["language.attention_mask"])
    return np.asarray(runner.normalise_actions(samples.actions[0]), dtype=np.float32), tokens


def manifest_of(bundle_dir: Any) -> Any:
    from vla_edge.bundle import load_bundle
    from vla_edge.policy import manifest_v2

    return manifest_v2(load_bundle(bundle_dir, verify=False))


def reference_chunks(ck: Any, spec: Any, observations: list[Observation], seed: int) -> Reference:
    """LeRobot's chunks for every observation, with the noise ``runner_chunks`` will use, and its prompt tokens."""
    chunks = np.stack([lerobot_chunk(ck, o, make_noise(spec, seed + 1000 + i)) for i, o in enumerate(observations)])
    return Reference(chunks=chunks, tokens=[lerobot_tokens(ck, o) for o in observations])


@dataclass
class Reference:
    chunks: np.ndarray  # [N, n, A] normalised
    tokens: list[list[int] | None]  # each observation's prompt tokens (None: the policy reads no language)


def runner_chunks(bundle_dir: Any, precision: str, observations: list[Observation], seed: int,
                  threads: int) -> tuple[np.ndarray, list[list[int] | None]]:
    from vla_edge.bundle import load_bundle
    from vla_edge.policy import PolicyRunner

    runner = PolicyRunner(load_bundle(bundle_dir), precision=precision, intra_op_threads=threads, seed=seed)
    spec = runner.manifest
    interval_ns = int((spec.observation.history_interval_s or 1.0 / spec.control_rate_hz) * 1e9)
    results = [runner_chunk(runner, o, make_noise(spec, seed + 1000 + i), interval_ns)
               for i, o in enumerate(observations)]
    del runner
    return np.stack([r[0] for r in results]), [r[1] for r in results]


def compare(reference: Reference, bundle_dir: Any, precision: str, observations: list[Observation], seed: int,
            threads: int) -> tuple[ParityFigures, int]:
    """Parity of one variant against LeRobot's chunks (same observations and noise seeds), and the number of
    observations whose prompt tokens differ from LeRobot's (must be 0: a random-weight policy's output hardly
    depends on its prompt, so a wrong prompt would pass a tolerance on the actions)."""
    chunks, tokens = runner_chunks(bundle_dir, precision, observations, seed, threads)
    mismatched = sum(1 for ours, theirs in zip(tokens, reference.tokens, strict=True)
                     if theirs is not None and ours != theirs)
    return parity_figures(reference.chunks, chunks), mismatched
