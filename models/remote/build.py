"""Build the remote tier's policy bundle: the reference VLA made wider, trained longer, fp32 only.

    python -m models.remote.build                          # into models/bundles/remote (~20 min on 2 cores)
    python -m models.remote.build --quick --out /tmp/rq    # smoke build (a minute)

It runs on a workstation or fleet server behind Triton (``vla-edge remote serve``), never on the board, so it
is not quantized and it may spend more compute per chunk: 16 Euler steps instead of 8, a 384-wide trunk and
three denoiser blocks (about 2.2 M parameters vs 0.8 M). It reuses the reference recipe's demos, training loop,
export and statistics; the output is an ordinary bundle (same manifest and graphs), so the same runtime
serves it. The closed-loop per-step success it reaches is written into the manifest (``parity.fp32``).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from models.build import _observations, latency_ms, training_demos, training_info
from models.reference import parity
from models.reference.data import split_by_episode
from models.reference.export import GRAPH_FILES, export_fp32, graph_specs
from models.reference.net import count_parameters
from models.reference.stats import embedding_stats, embeddings
from models.reference.train import TrainConfig, TrainResult, load_checkpoint, save_checkpoint, train
from vla_edge.bundle import (
    ActionSpace,
    BundleManifest,
    Normalisation,
    ParityFigures,
    VariantSpec,
    digest_files,
    load_bundle,
    write_manifest,
)
from vla_edge.paths import MODELS_DIR, REMOTE_BUNDLE_DIR
from vla_edge.tokenizer import WordTokenizer

BUNDLE_NAME = "remote"
BUNDLE_VERSION = "0.3.0"
# Wider and deeper than the reference (hidden 256, context 256, 2 blocks) where it is cheap to train on a CPU:
# the trunk and the denoiser. The CNN keeps its 32 channels, which cost most of the training time per iteration.
NET_OVERRIDES = {"hidden": 384, "context_dim": 384, "denoiser_blocks": 3}
DENOISING_STEPS = 16


@dataclass(frozen=True)
class RemoteBuildConfig:
    out: Path
    work: Path
    chains: int = 300
    recovery_chains: int = 100  # perturbed chains, as the reference build (models.build.training_demos)
    recovery_perturb: float = 0.1
    iterations: int = 6000
    batch_size: int = 64
    max_train_seconds: float | None = 1200.0
    seed: int = 0
    eval_chains: int = 20
    eval_steps: int = 10
    stats_frames: int = 4000
    held_out_observations: int = 256
    threads: int = 2
    checkpoint: Path | None = None
    device: str = "cpu"  # "cuda": train on a GPU (the export, statistics and evaluation stay on the CPU)
    train_only: bool = False  # stop after writing the checkpoint (train on a GPU machine, export elsewhere)

    @classmethod
    def quick(cls, out: Path, work: Path) -> RemoteBuildConfig:
        return cls(out=out, work=work, chains=4, recovery_chains=1, iterations=30, batch_size=16,
                   max_train_seconds=None,
                   eval_chains=1, eval_steps=2, stats_frames=128, held_out_observations=8)


def _manifest(cfg: RemoteBuildConfig, staging: Path, result: TrainResult, stats: object,
              figures: ParityFigures | None) -> BundleManifest:
    from hil.world import CONTROL_RATE_HZ, MAX_STEP

    net = result.net_config
    digests = digest_files(staging, [f"fp32/{GRAPH_FILES[g]}" for g in GRAPH_FILES])
    return BundleManifest(
        name=BUNDLE_NAME,
        version=BUNDLE_VERSION,
        description=(
            "Remote-tier VLA for the hil tabletop world: the reference architecture made wider "
            f"({count_parameters(result.model)} parameters), trained longer, {DENOISING_STEPS} Euler steps, fp32. "
            "Served by Triton (`vla-edge remote serve`); built by `python -m models.remote.build`."
        ),
        created_utc=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        image_height=net.image_size,
        image_width=net.image_size,
        state_dim=net.state_dim,
        action_dim=net.action_dim,
        horizon=net.horizon,
        denoising_steps=DENOISING_STEPS,
        control_rate_hz=CONTROL_RATE_HZ,
        instruction_features_dim=net.instruction_dim,
        context_dim=net.context_dim,
        embedding_dim=net.embedding_dim,
        vocabulary=result.vocabulary,
        action_space=ActionSpace(
            names=["target_x", "target_y", "grip", "done"],
            low=[0.0, 0.0, 0.0, 0.0],
            high=[1.0, 1.0, 1.0, 1.0],
            max_delta=[MAX_STEP, MAX_STEP, 1.0, 1.0],
        ),
        normalisation=Normalisation(**result.normalisation),
        embedding_stats=stats,  # type: ignore[arg-type]
        files=digests,
        variants={"fp32": VariantSpec(
            precision="fp32",
            quantization="float32 export (torch.onnx, opset 17); not quantized: this bundle runs on a server",
            graphs=graph_specs(net, "fp32"),
            size_bytes=sum(d.size_bytes for d in digests.values()),
            parity=figures,
        )},
        training=training_info(result, cfg.seed, cfg.threads),
    )


def build(cfg: RemoteBuildConfig, console: Console) -> int:
    import shutil

    started = time.monotonic()
    cfg.work.mkdir(parents=True, exist_ok=True)
    staging = cfg.work / "staging-remote-bundle"
    if staging.exists():
        shutil.rmtree(staging)
    demos = training_demos(cfg.chains, cfg.recovery_chains, cfg.recovery_perturb, cfg.seed, cfg.work)
    console.log(f"demos: {len(demos)} frames from {demos.num_episodes} chains")
    if cfg.checkpoint is not None:
        result = load_checkpoint(cfg.checkpoint)
    else:
        train_cfg = TrainConfig(iterations=cfg.iterations, batch_size=cfg.batch_size, seed=cfg.seed,
                                threads=cfg.threads, max_seconds=cfg.max_train_seconds,
                                log_every=min(200, max(1, cfg.iterations // 5)), device=cfg.device)
        result = train(demos, train_cfg, net_overrides=NET_OVERRIDES,
                       on_log=lambda step, loss: console.log(f"iter {step} loss {loss:.4f}"))
        save_checkpoint(result, cfg.work / "checkpoint-remote.pt")
        if cfg.train_only:
            console.print(f"checkpoint written to {cfg.work / 'checkpoint-remote.pt'} ({result.iterations} iterations "
                          f"in {result.seconds:.0f} s, held-out loss {result.held_out_loss:.4f}); export it with "
                          "--checkpoint")
            return 0
    console.log(f"train: {count_parameters(result.model)} parameters, {result.iterations} iterations in "
                f"{result.seconds:.0f} s, held-out loss {result.held_out_loss:.4f}")
    export_fp32(result.model, staging / "fp32")

    train_rows, held_rows = split_by_episode(demos, TrainConfig.held_out_fraction, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    held = _observations(demos, rng.choice(held_rows, size=min(cfg.held_out_observations, len(held_rows)),
                                           replace=False))
    sampled = _observations(demos, rng.choice(train_rows, size=min(cfg.stats_frames, len(train_rows)),
                                              replace=False))
    del demos
    tokenizer = WordTokenizer(result.vocabulary)
    graphs = (staging / "fp32" / GRAPH_FILES["instruction_encoder"], staging / "fp32" / GRAPH_FILES["observation_encoder"])
    stats = embedding_stats(embeddings(*graphs, tokenizer, sampled.images, sampled.states, sampled.instructions),
                            embeddings(*graphs, tokenizer, held.images, held.states, held.instructions))
    write_manifest(_manifest(cfg, staging, result, stats, None), staging)

    bundle = load_bundle(staging)
    loop = parity.closed_loop(parity.runner_for(bundle, "fp32", cfg.seed, cfg.threads), cfg.eval_chains,
                              cfg.seed + 1000, cfg.eval_steps)
    chunks = parity.sample_on(parity.runner_for(bundle, "fp32", cfg.seed, cfg.threads), held, 4, cfg.seed)
    figures = parity.parity_figures(chunks, chunks, loop, loop)
    write_manifest(_manifest(cfg, staging, result, stats, figures), staging)
    bundle = load_bundle(staging)
    ms = latency_ms(parity.runner_for(bundle, "fp32", cfg.seed, cfg.threads), held)
    console.print(
        f"remote bundle: {bundle.manifest.variants['fp32'].size_bytes / 1e6:.2f} MB fp32, "
        f"per-step success {loop.per_step_success:.1%} over {loop.steps} steps (seed {cfg.seed + 1000}), "
        f"encode + K=8 x {DENOISING_STEPS} steps {ms:.1f} ms; build {time.monotonic() - started:.0f} s"
    )
    if cfg.out.exists():
        shutil.rmtree(cfg.out)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(cfg.out))
    console.print(f"bundle written to {cfg.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.remote.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REMOTE_BUNDLE_DIR)
    parser.add_argument("--work", type=Path, default=MODELS_DIR / "work")
    parser.add_argument("--quick", action="store_true", help="tiny smoke build")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--max-train-seconds", type=float)
    parser.add_argument("--eval-chains", type=int)
    parser.add_argument("--checkpoint", type=Path, help="skip training: export this checkpoint")
    parser.add_argument("--threads", type=int, help="torch threads (default 2; 1 when sharing the cores)")
    parser.add_argument("--chains", type=int, help="demonstration chains to train on (default 300)")
    parser.add_argument("--recovery-chains", type=int, help="perturbed demonstration chains (default 100)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where to train (default cpu)")
    parser.add_argument("--train-only", action="store_true", help="stop after writing the checkpoint")
    args = parser.parse_args(argv)
    cfg = RemoteBuildConfig.quick(args.out, args.work) if args.quick else RemoteBuildConfig(args.out, args.work)
    overrides = {"iterations": args.iterations, "max_train_seconds": args.max_train_seconds,
                 "eval_chains": args.eval_chains, "checkpoint": args.checkpoint, "threads": args.threads,
                 "chains": args.chains, "recovery_chains": args.recovery_chains, "batch_size": args.batch_size,
                 "device": args.device,
                 "train_only": args.train_only or None}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    logging.getLogger().setLevel(logging.WARNING)
    return build(cfg, Console(stderr=True))


if __name__ == "__main__":
    sys.exit(main())
