"""Rebuild the reference bundle from nothing: demos → training → export → quantization → parity → manifest.

    python -m models.build                       # full build into models/bundles/reference (~25 min on 2 shared cores)
    python -m models.build --quick --out /tmp/b  # tiny smoke build (seconds; parity gate reported, not enforced)

Deterministic seeds throughout. Intermediate files (demos, checkpoint, staging bundle) go to ``--work``
(default ``models/work/``, git-ignored). The output directory is replaced only when every quantized variant
passes the parity gate; otherwise the command exits with status 1 and says which variant failed and by how much.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.reference import parity
from models.reference.data import Demos, concatenate, generate_demos, generate_recovery_demos, split_by_episode
from models.reference.export import GRAPH_FILES, export_fp32, graph_specs
from models.reference.net import count_parameters
from models.reference.quantize import INT4_BLOCK_SIZE, INT4_MIN_WIDTH, QuantizationReport, quantize_variant
from models.reference.stats import embedding_stats, embeddings
from models.reference.train import TrainConfig, TrainResult, load_checkpoint, save_checkpoint, train
from vla_edge.bundle import (
    ActionSpace,
    BundleManifest,
    Normalisation,
    ParityFigures,
    TrainingInfo,
    VariantSpec,
    digest_files,
    load_bundle,
    write_manifest,
)
from vla_edge.paths import MODELS_DIR, REFERENCE_BUNDLE_DIR
from vla_edge.tokenizer import WordTokenizer

BUNDLE_NAME = "reference"
BUNDLE_VERSION = "0.1.0"


@dataclass(frozen=True)
class BuildConfig:
    out: Path
    work: Path
    chains: int = 300
    recovery_chains: int = 100  # extra chains with perturbations executed (see data.generate_recovery_demos)
    recovery_perturb: float = 0.1
    iterations: int = 10000
    batch_size: int = 64
    max_train_seconds: float | None = 2400.0
    seed: int = 0
    eval_chains: int = 30
    eval_steps: int = 10
    held_out_observations: int = 256
    parity_samples: int = 8
    stats_frames: int = 4000
    enforce_gate: bool = True
    checkpoint: Path | None = None
    threads: int = 1  # see TrainConfig.threads
    horizon: int = 8  # actions per chunk (NetConfig.horizon); 50 for the slow-path variant (docs/scheduler.md)
    name: str = BUNDLE_NAME
    resume: Path | None = None  # continue training this checkpoint (a warm restart of the schedule)

    @classmethod
    def quick(cls, out: Path, work: Path) -> BuildConfig:
        return cls(
            out=out,
            work=work,
            chains=4,
            recovery_chains=1,
            iterations=30,
            batch_size=16,
            max_train_seconds=None,
            eval_chains=1,
            eval_steps=2,
            held_out_observations=8,
            parity_samples=2,
            stats_frames=128,
            enforce_gate=False,
        )



def training_demos(chains: int, recovery_chains: int, perturb: float, seed: int, work: Path,
                   on_plain_done: Callable[[], object] | None = None) -> Demos:
    """The expert demonstrations a policy is trained on: plain chains plus perturbed recovery chains (cached in
    ``work``); shared by the reference and remote builds so both learn from the same kind of data."""
    demos = generate_demos(chains, seed, work / f"demos-{chains}-s{seed}.npz")
    if on_plain_done is not None:
        on_plain_done()
    if recovery_chains <= 0:
        return demos
    recovery = generate_recovery_demos(
        recovery_chains, seed, perturb, work / f"recovery-{recovery_chains}-p{perturb:g}-s{seed}.npz"
    )
    return concatenate(demos, recovery)


def training_info(result, seed: int, threads: int) -> TrainingInfo:
    """What the manifest records about how a bundle's model was trained (shared by the reference and remote builds)."""
    return TrainingInfo(
        parameters=count_parameters(result.model),
        train_seconds=round(result.seconds, 1),
        iterations=result.iterations,
        demo_chains=result.episodes,
        demo_frames=result.train_frames,
        final_loss=round(result.held_out_loss, 5),
        seed=seed,
        torch_version=torch.__version__,
        threads=threads,
        device=result.train_config.device,
        batch_size=result.train_config.batch_size,
    )

def _quantization_text(precision: str, reports: list[QuantizationReport]) -> str:
    counts = "; ".join(r.describe() for r in reports)
    if precision == "fp32":
        return "float32 export (torch.onnx, opset 17); Linear layers as MatMul + Add"
    if precision == "int8":
        return (
            "onnxruntime quantize_dynamic: int8 per-channel weights for MatMul, int8 activations quantized at run "
            f"time; Conv layers and the keypoint MatMul stay fp32. {counts}"
        )
    return (
        f"onnxruntime MatMulNBits: 4-bit asymmetric weights, block {INT4_BLOCK_SIZE}, accuracy_level 4 (int8 compute); "
        "Conv layers, the word embedding, the keypoint MatMul and MatMuls narrower than "
        f"{INT4_MIN_WIDTH} features (chunk in/out, state projection) stay fp32. {counts}"
    )


def _manifest(
    cfg: BuildConfig,
    staging: Path,
    result: TrainResult,
    reports: dict[str, list[QuantizationReport]],
    stats: object,
    figures: dict[str, ParityFigures] | None,
) -> BundleManifest:
    from hil.world import CONTROL_RATE_HZ, MAX_STEP

    net = result.net_config
    files = [f"{p}/{GRAPH_FILES[g]}" for p in ("fp32", "int8", "int4") for g in GRAPH_FILES]
    digests = digest_files(staging, files)
    variants = {}
    for precision in ("fp32", "int8", "int4"):
        size = sum(d.size_bytes for rel, d in digests.items() if rel.startswith(f"{precision}/"))
        variants[precision] = VariantSpec(
            precision=precision,
            quantization=_quantization_text(precision, reports.get(precision, [])),
            graphs=graph_specs(net, precision),
            size_bytes=size,
            parity=None if figures is None else figures.get(precision),
        )
    norm = result.normalisation
    return BundleManifest(
        name=cfg.name,
        version=BUNDLE_VERSION,
        description=(
            "Reference VLA for the hil tabletop world: CNN with keypoints + bag-of-words instruction encoder + "
            "flow-matching MLP denoiser. Trained on scripted-expert demos by `python -m models.build`."
        ),
        created_utc=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        image_height=net.image_size,
        image_width=net.image_size,
        state_dim=net.state_dim,
        action_dim=net.action_dim,
        horizon=net.horizon,
        denoising_steps=8,
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
        normalisation=Normalisation(**norm),
        embedding_stats=stats,  # type: ignore[arg-type]
        files=digests,
        variants=variants,
        confidence_thresholds=None,
        training=training_info(result, cfg.seed, cfg.threads),
    )


def _observations(demos: Demos, rows: np.ndarray) -> parity.HeldOut:
    rows = np.sort(rows)
    return parity.HeldOut(
        images=demos.images[rows],
        states=demos.states[rows],
        instructions=[demos.instructions[i] for i in demos.instruction_index[rows]],
    )


def latency_ms(runner: object, held: parity.HeldOut, num_samples: int = 8, repeats: int = 30) -> float:
    """Median milliseconds of encode + K-sample denoise (instruction cached), on this machine."""
    times = []
    runner.set_instruction(held.instructions[0])  # type: ignore[attr-defined]
    for i in range(repeats):
        encoded = runner.encode(held.images[i % len(held.images)], held.states[i % len(held.states)])  # type: ignore[attr-defined]
        chunk = runner.sample(encoded, num_samples)  # type: ignore[attr-defined]
        times.append(chunk.timings_ms["encode"] + chunk.timings_ms["denoise"])
    return statistics.median(times)


def build(cfg: BuildConfig, console: Console) -> int:
    started = time.monotonic()
    cfg.work.mkdir(parents=True, exist_ok=True)
    staging = cfg.work / "staging-bundle"
    if staging.exists():
        shutil.rmtree(staging)
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"demos ({cfg.chains}+{cfg.recovery_chains} chains)", total=2)
        demos = training_demos(cfg.chains, cfg.recovery_chains, cfg.recovery_perturb, cfg.seed, cfg.work,
                               on_plain_done=lambda: progress.update(task, completed=1))
        progress.update(task, completed=2)
        console.log(f"demos: {len(demos)} frames from {demos.num_episodes} chains (with recovery demos)")

        task = progress.add_task("train", total=cfg.iterations)
        if cfg.checkpoint is not None:
            result = load_checkpoint(cfg.checkpoint)
            progress.update(task, completed=cfg.iterations)
            console.log(f"train: reusing {cfg.checkpoint}")
        else:
            train_cfg = TrainConfig(
                iterations=cfg.iterations,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                threads=cfg.threads,
                max_seconds=cfg.max_train_seconds,
                log_every=min(100, max(1, cfg.iterations // 5)),
            )

            def on_log(step: int, loss: float) -> None:
                progress.update(task, completed=step, description=f"train (loss {loss:.3f})")
                if not console.is_terminal and step % 1000 == 0:
                    console.log(f"train: iteration {step}, flow loss {loss:.4f}")  # progress in a log file

            overrides = None if cfg.horizon == 8 else {"horizon": cfg.horizon}
            initial = load_checkpoint(cfg.resume) if cfg.resume is not None else None
            result = train(demos, train_cfg, net_overrides=None if initial else overrides, on_log=on_log,
                           initial=initial)
            if initial is not None:  # the manifest counts the whole training
                result.iterations += initial.iterations
                result.seconds += initial.seconds
            save_checkpoint(result, cfg.work / "checkpoint.pt")
        console.log(
            f"train: {count_parameters(result.model)} parameters, {result.iterations} iterations in "
            f"{result.seconds:.0f} s, held-out loss {result.held_out_loss:.4f}"
        )

        task = progress.add_task("export + quantize", total=3)
        export_fp32(result.model, staging / "fp32")
        progress.update(task, advance=1)
        reports = {precision: quantize_variant(staging / "fp32", staging / precision, precision) for precision in ("int8", "int4")}
        progress.update(task, completed=3)
        for precision, lines in reports.items():
            for report in lines:
                console.log(f"{precision} {report.describe()}")

        task = progress.add_task("embedding statistics", total=1)
        # The same split as training, so held-out observations come from chains the model never saw.
        train_rows, held_rows = split_by_episode(demos, TrainConfig.held_out_fraction, cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        held = _observations(demos, rng.choice(held_rows, size=min(cfg.held_out_observations, len(held_rows)), replace=False))
        sampled = _observations(demos, rng.choice(train_rows, size=min(cfg.stats_frames, len(train_rows)), replace=False))
        tokenizer = WordTokenizer(result.vocabulary)
        train_embeddings = embeddings(
            staging / "fp32" / GRAPH_FILES["instruction_encoder"],
            staging / "fp32" / GRAPH_FILES["observation_encoder"],
            tokenizer,
            sampled.images,
            sampled.states,
            sampled.instructions,
        )
        held_embeddings = embeddings(
            staging / "fp32" / GRAPH_FILES["instruction_encoder"],
            staging / "fp32" / GRAPH_FILES["observation_encoder"],
            tokenizer,
            held.images,
            held.states,
            held.instructions,
        )
        stats = embedding_stats(train_embeddings, held_embeddings)
        write_manifest(_manifest(cfg, staging, result, reports, stats, None), staging)
        progress.update(task, completed=1)
        del demos, sampled

        bundle = load_bundle(staging)
        task = progress.add_task("parity (closed loop)", total=3)
        loops: dict[str, parity.ClosedLoop] = {}
        chunks: dict[str, np.ndarray] = {}
        latencies: dict[str, float] = {}
        for precision in ("fp32", "int8", "int4"):
            runner = parity.runner_for(bundle, precision, cfg.seed, cfg.threads)
            chunks[precision] = parity.sample_on(runner, held, cfg.parity_samples, cfg.seed)
            latencies[precision] = latency_ms(runner, held)
            loops[precision] = parity.closed_loop(
                parity.runner_for(bundle, precision, cfg.seed, cfg.threads), cfg.eval_chains, cfg.seed + 1000, cfg.eval_steps
            )
            progress.update(task, advance=1)
            console.log(
                f"{precision}: per-step success {loops[precision].per_step_success:.1%} over {loops[precision].steps} steps"
            )
    figures = {
        precision: parity.parity_figures(chunks["fp32"], chunks[precision], loops["fp32"], loops[precision])
        for precision in ("fp32", "int8", "int4")
    }
    write_manifest(_manifest(cfg, staging, result, reports, stats, figures), staging)
    load_bundle(staging)  # the final manifest must validate and match the files

    table = Table(title=f"bundle {cfg.name} {BUNDLE_VERSION}")
    for column in ("variant", "size", "action MAE", "max err", "per-step success", "steps", "encode+K=8 ms", "gate"):
        table.add_column(column)
    manifest = load_bundle(staging).manifest
    for precision, f in figures.items():
        table.add_row(
            precision,
            f"{manifest.variants[precision].size_bytes / 1e6:.2f} MB",
            f"{f.action_mae:.4f}",
            f"{f.action_max_abs_error:.3f}",
            f"{f.per_step_success:.1%}",
            str(f.closed_loop_steps),
            f"{latencies[precision]:.1f}",
            "pass" if f.passed else "FAIL",
        )
    console.print(table)
    console.print(f"training {result.seconds:.0f} s; whole build {time.monotonic() - started:.0f} s")

    failed = parity.failures(figures, loops["fp32"].per_step_success)
    if failed and cfg.enforce_gate:
        console.print("[red]parity gate failed; the bundle was NOT installed:[/red]\n  " + "\n  ".join(failed))
        console.print(f"staging bundle left for inspection in {staging}")
        return 1
    if failed:
        console.print("[yellow]parity gate not enforced (--quick):[/yellow]\n  " + "\n  ".join(failed))
    if cfg.out.exists():
        shutil.rmtree(cfg.out)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(cfg.out))
    console.print(f"bundle written to {cfg.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REFERENCE_BUNDLE_DIR, help="bundle directory to (re)write")
    parser.add_argument("--work", type=Path, default=MODELS_DIR / "work", help="demos, checkpoint, staging")
    parser.add_argument("--quick", action="store_true", help="tiny smoke build; the parity gate is not enforced")
    parser.add_argument("--chains", type=int, help="expert demo chains (default 300)")
    parser.add_argument("--recovery-chains", type=int, help="demo chains with perturbations (default 100)")
    parser.add_argument("--iterations", type=int, help="training iterations (default 10000)")
    parser.add_argument("--max-train-seconds", type=float, help="stop training when this budget is spent")
    parser.add_argument("--eval-chains", type=int, help="closed-loop chains per variant (default 30, 10 steps each)")
    parser.add_argument("--checkpoint", type=Path, help="skip training: export this checkpoint (from train.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--horizon", type=int, help="actions per chunk (default 8; docs/scheduler.md trains 50)")
    parser.add_argument("--name", help="bundle name in the manifest (default reference)")
    parser.add_argument("--resume", type=Path, help="continue training this checkpoint (from an earlier build)")
    args = parser.parse_args(argv)
    cfg = BuildConfig.quick(args.out, args.work) if args.quick else BuildConfig(out=args.out, work=args.work)
    overrides = {
        "chains": args.chains,
        "recovery_chains": args.recovery_chains,
        "iterations": args.iterations,
        "max_train_seconds": args.max_train_seconds,
        "eval_chains": args.eval_chains,
        "checkpoint": args.checkpoint,
        "seed": args.seed,
        "horizon": args.horizon,
        "name": args.name,
        "resume": args.resume,
    }
    cfg = BuildConfig(**{**cfg.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    console = Console(stderr=True)
    # onnxruntime's quantization module turns the root logger up to INFO when imported.
    logging.getLogger().setLevel(logging.WARNING)
    try:
        return build(cfg, console)
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
