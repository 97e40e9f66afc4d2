"""Train the reference VLA with flow matching on expert demos (CPU, a few minutes to ~20 minutes).

    python -m models.reference.train --demos models/work/demos-300-s0.npz --iterations 6000 --out models/work/ckpt.pt

The exported weights are an exponential moving average (EMA) of the trained ones: flow policies sample more
smoothly from EMA weights, and it costs nothing at run time.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.reference.data import Demos, chunk_index, split_by_episode, target_block_positions
from models.reference.net import NetConfig, ReferenceVLA, count_parameters
from vla_edge.tokenizer import WordTokenizer, build_vocabulary

ACTION_LOW = [0.0, 0.0, 0.0, 0.0]
ACTION_HIGH = [1.0, 1.0, 1.0, 1.0]


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 10000
    batch_size: int = 64
    noise_per_obs: int = 4  # (noise, t) draws per encoded observation: the denoiser is cheap, the CNN is not
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    # One thread: on a shared 2-core machine, a second OpenMP thread that gets descheduled stalls every barrier
    # (measured 0.27 s/iteration with 1 thread vs 2.1 s with 2 while other jobs ran; 0.08 s with 2 when idle).
    threads: int = 1
    max_seconds: float | None = None  # stop early when the time budget is spent
    held_out_fraction: float = 0.05
    log_every: int = 100
    # The block-position error is small in normalised units (0.04 → MSE 0.0016), so a small weight leaves it
    # with almost no gradient once the flow loss dominates; at 2.0 closed-loop failures were still mostly grasps
    # aimed a few centimetres off the named block.
    block_loss_weight: float = 20.0
    # "cuda" trains on a GPU (models/remote/build.py --device cuda); the returned model is always on the CPU.
    device: str = "cpu"


@dataclass
class TrainResult:
    model: ReferenceVLA  # the EMA weights, in eval mode
    net_config: NetConfig
    train_config: TrainConfig
    vocabulary: list[str]
    normalisation: dict[str, list[float]]
    history: list[tuple[int, float]] = field(default_factory=list)
    held_out_loss: float = float("nan")
    seconds: float = 0.0
    iterations: int = 0
    train_frames: int = 0
    episodes: int = 0


def normalisation_stats(demos: Demos, rows: np.ndarray, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    sample = demos.images[np.sort(rng.choice(rows, size=min(2000, len(rows)), replace=False))]
    pixels = sample.reshape(-1, 3).astype(np.float64) / 255.0
    states = demos.states[rows]
    state_std = np.maximum(states.std(axis=0), 1e-2)
    return {
        "image_mean": pixels.mean(axis=0).tolist(),
        "image_std": np.maximum(pixels.std(axis=0), 1e-2).tolist(),
        "state_mean": states.mean(axis=0).astype(np.float64).tolist(),
        "state_std": state_std.astype(np.float64).tolist(),
        "action_low": list(ACTION_LOW),
        "action_high": list(ACTION_HIGH),
    }


def normalise_actions(actions: np.ndarray) -> np.ndarray:
    low, high = np.asarray(ACTION_LOW, np.float32), np.asarray(ACTION_HIGH, np.float32)
    return (2.0 * (actions - low) / (high - low) - 1.0).astype(np.float32)


class _Batches:
    """Mini-batches of (tokens, image, state, normalised chunk) from the given rows of the demos."""

    def __init__(self, demos: Demos, rows: np.ndarray, tokens_table: np.ndarray, horizon: int) -> None:
        self.demos = demos
        self.rows = rows
        self.tokens_table = torch.from_numpy(tokens_table)
        self.chunks = normalise_actions(demos.actions[chunk_index(demos.episode_index, demos.step_index, horizon)])
        self.block_xy = 2.0 * target_block_positions(demos) - 1.0

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, positions: np.ndarray) -> tuple[torch.Tensor, ...]:
        d = self.demos
        index = np.sort(self.rows[positions])
        return (
            self.tokens_table[torch.from_numpy(d.instruction_index[index])],
            torch.from_numpy(d.images[index]),
            torch.from_numpy(d.states[index]),
            torch.from_numpy(self.chunks[index]),
            torch.from_numpy(self.block_xy[index]),
        )


def _lr_at(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    if cfg.max_seconds:
        # With a time budget the schedule anneals by whichever ends first, so a run stopped by the clock still
        # finishes at the low learning rate instead of being cut off mid-schedule.
        progress = max(progress, elapsed_s / cfg.max_seconds)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def held_out_loss(model: ReferenceVLA, batches: _Batches, noise_per_obs: int, seed: int, limit: int = 1024,
                  device: str = "cpu") -> float:
    model.eval()
    n = min(limit, len(batches))
    index = np.random.default_rng(seed).choice(len(batches), size=n, replace=False)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for start in range(0, n, 128):
        part = index[start : start + 128]
        inputs = [x.to(device) for x in batches.get(part)[:4]]
        loss = model.flow_matching_loss(*inputs, noise_per_obs=noise_per_obs, generator=generator)
        losses.append(float(loss) * len(part))
    return sum(losses) / n


def train(
    demos: Demos,
    cfg: TrainConfig,
    net_overrides: dict[str, int] | None = None,
    on_log: Callable[[int, float], None] | None = None,
    initial: TrainResult | None = None,
    prepare: Callable[[ReferenceVLA], None] | None = None,
) -> TrainResult:
    """Train on all but a held-out set of chains; returns the EMA model and its held-out loss.

    ``initial`` fine-tunes a trained result instead of a fresh network: a copy of its weights, its vocabulary
    (token ids must not move) and its normalisation are kept. ``prepare`` is called on the network before the
    EMA copy and the optimiser are made, so both see what it registers (e.g. the ternary parametrizations of
    quantization-aware fine-tuning, models/ternary/qat.py).
    """
    if initial is not None and net_overrides:
        raise ValueError("net_overrides cannot resize a network that is fine-tuned from initial")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    train_rows, held_rows = split_by_episode(demos, cfg.held_out_fraction, cfg.seed)
    if initial is None:
        vocabulary = build_vocabulary(demos.instructions)
        net_cfg = NetConfig(vocab_size=len(vocabulary), **(net_overrides or {}))
        model = ReferenceVLA(net_cfg)
        stats = normalisation_stats(demos, train_rows, cfg.seed)
        model.observation_encoder.set_normalisation(
            stats["image_mean"], stats["image_std"], stats["state_mean"], stats["state_std"]
        )
    else:
        vocabulary, net_cfg, stats = list(initial.vocabulary), initial.net_config, initial.normalisation
        model = copy.deepcopy(initial.model)
    tokens_table = WordTokenizer(vocabulary).encode_padded(list(demos.instructions))
    if prepare is not None:
        prepare(model)
    model.to(cfg.device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_batches = _Batches(demos, train_rows, tokens_table, net_cfg.horizon)
    held_batches = _Batches(demos, held_rows, tokens_table, net_cfg.horizon)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[tuple[int, float]] = []
    running = 0.0
    start = time.monotonic()
    step = 0
    model.train()
    for step in range(cfg.iterations):
        if cfg.max_seconds is not None and time.monotonic() - start > cfg.max_seconds:
            break
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(step, cfg, time.monotonic() - start)
        index = rng.integers(0, len(train_rows), size=cfg.batch_size)
        batch = [x.to(cfg.device, non_blocking=True) for x in train_batches.get(index)]
        flow_loss, block_loss = model.losses(*batch, noise_per_obs=cfg.noise_per_obs, generator=generator)
        loss = flow_loss + cfg.block_loss_weight * block_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        # Early on the EMA would mostly remember the random initialisation; ramp its decay up.
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - decay)
        running = running + flow_loss.detach()  # read back only when logged: no GPU sync per iteration
        if (step + 1) % cfg.log_every == 0:
            mean = float(running) / cfg.log_every
            history.append((step + 1, mean))
            if on_log is not None:
                on_log(step + 1, mean)
            running = 0.0
    else:
        step = cfg.iterations - 1
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
    seconds = time.monotonic() - start
    held_loss = held_out_loss(ema, held_batches, cfg.noise_per_obs, cfg.seed, device=cfg.device)
    return TrainResult(
        model=ema.cpu().eval(),
        net_config=net_cfg,
        train_config=cfg,
        vocabulary=vocabulary,
        normalisation=stats,
        history=history,
        held_out_loss=held_loss,
        seconds=seconds,
        iterations=step + 1,
        train_frames=len(train_rows),
        episodes=demos.num_episodes,
    )


def save_checkpoint(result: TrainResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": result.model.state_dict(),
            "net_config": result.net_config.to_dict(),
            "train_config": asdict(result.train_config),
            "vocabulary": result.vocabulary,
            "normalisation": result.normalisation,
            "history": result.history,
            "held_out_loss": result.held_out_loss,
            "seconds": result.seconds,
            "iterations": result.iterations,
            "train_frames": result.train_frames,
            "episodes": result.episodes,
        },
        path,
    )


def load_checkpoint(path: Path) -> TrainResult:
    data = torch.load(path, weights_only=True)
    net_cfg = NetConfig(**data["net_config"])
    model = ReferenceVLA(net_cfg)
    model.load_state_dict(data["state_dict"])
    return TrainResult(
        model=model.eval(),
        net_config=net_cfg,
        train_config=TrainConfig(**data["train_config"]),
        vocabulary=list(data["vocabulary"]),
        normalisation=data["normalisation"],
        history=[tuple(h) for h in data["history"]],
        held_out_loss=float(data["held_out_loss"]),
        seconds=float(data["seconds"]),
        iterations=int(data["iterations"]),
        train_frames=int(data["train_frames"]),
        episodes=int(data["episodes"]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.reference.train", description=__doc__.splitlines()[0])
    parser.add_argument("--demos", type=Path, required=True, help="demo .npz (models.reference.data format)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint path (.pt)")
    parser.add_argument("--iterations", type=int, default=TrainConfig.iterations)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--max-seconds", type=float, default=None)
    args = parser.parse_args(argv)
    demos = Demos.load(args.demos)
    cfg = TrainConfig(
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        max_seconds=args.max_seconds,
    )
    print(f"{len(demos)} frames, {demos.num_episodes} chains", flush=True)
    result = train(demos, cfg, on_log=lambda step, loss: print(f"iter {step} loss {loss:.4f}", flush=True))
    save_checkpoint(result, args.out)
    print(
        f"params {count_parameters(result.model)}, {result.iterations} iterations in {result.seconds:.0f} s, "
        f"held-out loss {result.held_out_loss:.4f} -> {args.out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
