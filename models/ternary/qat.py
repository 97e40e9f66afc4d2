"""Quantization-aware fine-tuning (QAT) of the reference policy for its ternary (1.58-bit) variant.

    python -m models.ternary.qat --out models/work/ternary-qat [--iterations 2000] [--quick]

Post-training ternarisation (models/ternary/build.py) leaves the reference policy at 0 % closed-loop success.
Here the trained checkpoint is fine-tuned with that very ternarisation in its forward pass: every Linear weight
that the export turns into an eligible ONNX MatMul (input width a multiple of 32, in the three exported modules)
is seen as clip(round(W / gamma), -1, 1) * gamma with gamma = mean |W| per output unit, and the gradient passes
straight through to the latent fp32 W (STE: W + (ternary(W) - W).detach()). Loss, batches, learning-rate
schedule and EMA are those of models/reference/train.py; the learning rate is lower than training's because the
network starts trained.

Written to ``--out`` (replaced):

* ``latent/``: a bundle of the fine-tuned *latent* fp32 weights (plus their regular int8/int4), manifest taken
  from the reference bundle (vocabulary, normalisation, action space) with embedding statistics recomputed;
* ``bundle/``: ``models.ternary.build`` run on ``latent/``: int4/ = 2-bit MatMulNBits, int8/ = int8 kernels,
  both holding the ternary weights; this is what ``bench.ternary`` measures as the QAT rows;
* ``checkpoint.pt``: the latent weights in models/reference/train.py's checkpoint format;
* ``qat.json``: the run: settings, time, and the held-out loss of fp32, post-training ternary and QAT ternary.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from models.reference.data import Demos, concatenate, generate_demos, generate_recovery_demos, split_by_episode
from models.reference.export import GRAPH_FILES, export_fp32
from models.reference.net import ReferenceVLA
from models.reference.stats import embedding_stats
from models.reference.train import TrainConfig, TrainResult, load_checkpoint, save_checkpoint, train
from models.ternary.build import BLOCK
from models.ternary.build import build as build_ternary
from vla_edge.bundle import BundleManifest, digest_files, load_bundle, write_manifest
from vla_edge.paths import MODELS_DIR, REFERENCE_BUNDLE_DIR

# The modules that become ONNX graphs; anything else (the training-only block head) is never exported, so it
# is never ternarised and stays fp32 here too.
EXPORTED_MODULES = tuple(GRAPH_FILES)
PRECISIONS = ("fp32", "int8", "int4")
METHOD = "quantization-aware fine-tuned (models/ternary/qat.py, straight-through absmean)"


@dataclass(frozen=True)
class QatConfig:
    out: Path
    checkpoint: Path = MODELS_DIR / "work" / "checkpoint.pt"
    bundle: Path = REFERENCE_BUNDLE_DIR  # its manifest (vocabulary, normalisation, ...) is copied
    work: Path = MODELS_DIR / "work"  # the demo caches of models.build
    chains: int = 300  # the demos the reference was trained on (models.build defaults): same caches, same split
    recovery_chains: int = 100
    recovery_perturb: float = 0.1
    iterations: int = 2000
    batch_size: int = 64
    lr: float = 3e-4  # a third of training's: the weights start trained, only the rounding is new to them
    warmup: int = 100
    seed: int = 0
    threads: int = 1  # see TrainConfig.threads
    max_seconds: float | None = None
    stats_frames: int = 4000
    held_out_observations: int = 256
    log_every: int = 100
    cache_demos: bool = True
    device: str = "cpu"  # "cuda": fine-tune on a GPU (export and statistics stay on the CPU)

    @classmethod
    def quick(cls, out: Path, **overrides: object) -> QatConfig:
        """A handful of iterations on two freshly generated chains (nothing cached): seconds, for tests."""
        settings: dict[str, object] = {
            "chains": 2,
            "recovery_chains": 0,
            "iterations": 4,
            "batch_size": 8,
            "warmup": 2,
            "stats_frames": 128,
            "held_out_observations": 16,
            "log_every": 2,
            "cache_demos": False,
        }
        return cls(out=out, **{**settings, **overrides})  # type: ignore[arg-type]


@dataclass
class QatRecord:
    """What ``qat.json`` holds about a run."""

    iterations: int
    train_seconds: float
    config: dict[str, object]
    ternarised: list[str]
    demo_chains: int
    demo_frames: int
    # Same held-out chains, same noise draws (train.held_out_loss): what ternarising costs before and after QAT.
    held_out_loss_fp32: float
    held_out_loss_post_training_ternary: float
    held_out_loss_qat_ternary: float
    history: list[tuple[int, float]] = field(default_factory=list)
    latent_bundle: str = ""
    ternary_bundle: str = ""
    created_utc: str = ""


def ternary_weight(weight: torch.Tensor) -> torch.Tensor:
    """The values models/ternary/build.py gives a weight: clip(round(W / gamma), -1, 1) * gamma.

    A torch Linear weight is (N out, K in), the transpose of the ONNX (K, N) initializer, so build.py's
    per-output-column absmean (mean over K) is the mean over dim 1 here. torch.round and np.rint both round
    half to even.
    """
    gamma = weight.detach().abs().mean(dim=1, keepdim=True).clamp(min=1e-8)
    return torch.clamp(torch.round(weight / gamma), -1.0, 1.0) * gamma


class AbsmeanTernary(nn.Module):
    """Parametrization: the forward pass sees the ternary weight, the gradient reaches the latent one (STE)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (ternary_weight(weight) - weight).detach()


def eligible_linears(model: ReferenceVLA) -> dict[str, nn.Linear]:
    """Linear layers whose exported MatMul build.py ternarises, by module path (``denoiser.blocks.0.fc1``).

    The export writes each 2-D Linear as MatMul with the (K, N) weight ``<path>.weight_kn``; ``_eligible`` takes
    those with K (= in_features) a multiple of ``BLOCK``. tests/models/test_ternary_qat.py checks the two agree.
    """
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[0] in EXPORTED_MODULES and module.in_features % BLOCK == 0:
            found[name] = module
    return found


def ternarise_model(model: ReferenceVLA) -> list[str]:
    """Register the STE ternarisation on every eligible weight; returns their module paths."""
    layers = eligible_linears(model)
    for name, module in layers.items():
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"{name}.weight is already parametrized: ternarise a model once")
        parametrize.register_parametrization(module, "weight", AbsmeanTernary())
    return list(layers)


def remove_ternarisation(model: ReferenceVLA) -> ReferenceVLA:
    """Drop the parametrizations and keep the latent fp32 weights (what is exported); returns ``model``."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return model


def load_initial(cfg: QatConfig) -> tuple[TrainResult, BundleManifest]:
    """The trained checkpoint and the reference manifest, checked to describe the same network."""
    if not cfg.checkpoint.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {cfg.checkpoint}: `python -m models.build` writes one to models/work/checkpoint.pt, "
            "or pass --checkpoint"
        )
    initial = load_checkpoint(cfg.checkpoint)
    manifest = load_bundle(cfg.bundle).manifest
    if initial.vocabulary != manifest.vocabulary:
        raise ValueError(
            f"{cfg.checkpoint} and {cfg.bundle} have different vocabularies: token ids would not match; "
            "pass the bundle that was built from this checkpoint"
        )
    net = initial.net_config
    sizes = {"horizon": (net.horizon, manifest.horizon), "action_dim": (net.action_dim, manifest.action_dim),
             "context_dim": (net.context_dim, manifest.context_dim),
             "embedding_dim": (net.embedding_dim, manifest.embedding_dim)}
    wrong = {k: v for k, v in sizes.items() if v[0] != v[1]}
    if wrong:
        raise ValueError(f"{cfg.checkpoint} does not fit {cfg.bundle} (checkpoint, bundle): {wrong}")
    return initial, manifest


def load_demos(cfg: QatConfig) -> Demos:
    """The training demos: models.build's caches in ``work`` (full run), or a few fresh chains (quick)."""
    def cache(name: str) -> Path | None:
        return cfg.work / name if cfg.cache_demos else None

    demos = generate_demos(cfg.chains, cfg.seed, cache(f"demos-{cfg.chains}-s{cfg.seed}.npz"))
    if cfg.recovery_chains:
        recovery = generate_recovery_demos(
            cfg.recovery_chains,
            cfg.seed,
            cfg.recovery_perturb,
            cache(f"recovery-{cfg.recovery_chains}-p{cfg.recovery_perturb:g}-s{cfg.seed}.npz"),
        )
        demos = concatenate(demos, recovery)
    return demos


def train_config(cfg: QatConfig, iterations: int | None = None) -> TrainConfig:
    return TrainConfig(
        iterations=cfg.iterations if iterations is None else iterations,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup=min(cfg.warmup, max(1, cfg.iterations)),
        seed=cfg.seed,
        threads=cfg.threads,
        max_seconds=cfg.max_seconds,
        log_every=cfg.log_every,
        device=cfg.device,
    )


@torch.no_grad()
def ternary_embeddings(model: ReferenceVLA, demos: Demos, rows: np.ndarray, vocabulary: list[str]) -> np.ndarray:
    """(N, E) embeddings through ``model`` as it runs (ternary while parametrized), for the OOD statistics."""
    from vla_edge.tokenizer import WordTokenizer

    model.eval()
    tokens = torch.from_numpy(WordTokenizer(vocabulary).encode_padded(list(demos.instructions)))
    out = []
    for start in range(0, len(rows), 256):
        index = np.sort(rows[start : start + 256])
        features = model.instruction_encoder(tokens[torch.from_numpy(demos.instruction_index[index])])
        _, embedding = model.observation_encoder(
            torch.from_numpy(demos.images[index]), torch.from_numpy(demos.states[index]), features
        )
        out.append(embedding.numpy())
    return np.concatenate(out).astype(np.float64)


def write_latent_bundle(
    result: TrainResult, manifest: BundleManifest, stats: object, cfg: QatConfig, out: Path
) -> Path:
    """fp32 graphs of the latent weights + their regular int8/int4, with the reference manifest adapted."""
    from models.build import training_info
    from models.reference.quantize import quantize_variant

    missing = [p for p in PRECISIONS if p not in manifest.variants]
    if missing:
        raise ValueError(f"{cfg.bundle} lacks the variants {missing}: the latent bundle copies their graph specs")
    if out.exists():
        shutil.rmtree(out)
    export_fp32(result.model, out / "fp32")
    for precision in ("int8", "int4"):
        quantize_variant(out / "fp32", out / precision, precision)
    digests = digest_files(out, [f"{p}/{g}" for p in PRECISIONS for g in GRAPH_FILES.values()])
    texts = {
        "fp32": "float32 export of the LATENT weights of ternary quantization-aware fine-tuning: not ternary "
        "themselves; models.ternary.build ternarises them (the bundle next to this one)",
    }
    variants = {}
    for precision in PRECISIONS:
        spec = manifest.variants[precision]
        size = sum(d.size_bytes for rel, d in digests.items() if rel.startswith(f"{precision}/"))
        variants[precision] = spec.model_copy(
            update={"size_bytes": size, "parity": None, "quantization": texts.get(precision, spec.quantization)}
        )
    latent = manifest.model_copy(
        update={
            "name": f"{manifest.name}-qat",
            "description": f"Latent fp32 weights of {manifest.name} after ternary quantization-aware fine-tuning "
            "(models/ternary/qat.py). Embedding statistics are those of the TERNARY weights (what runs); "
            "confidence thresholds are not copied: they were calibrated for the reference weights.",
            "created_utc": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "embedding_stats": stats,
            "files": digests,
            "variants": variants,
            "confidence_thresholds": None,
            "training": training_info(result, cfg.seed, cfg.threads),
        }
    )
    write_manifest(latent, out)
    load_bundle(out)  # must validate and match its files
    return out


def run(cfg: QatConfig, log: bool = True) -> QatRecord:
    """Fine-tune, export the latent bundle, build the ternary bundle from it; returns what qat.json holds."""
    def say(text: str) -> None:
        if log:
            print(text, flush=True)

    initial, manifest = load_initial(cfg)
    demos = load_demos(cfg)
    say(f"demos: {len(demos)} frames from {demos.num_episodes} chains")
    # Baselines on the same held-out chains and noise as the final figure: train() with no iterations just
    # evaluates its (EMA) model.
    fp32_loss = train(demos, train_config(cfg, 0), initial=initial).held_out_loss
    ptq_loss = train(demos, train_config(cfg, 0), initial=initial, prepare=ternarise_model).held_out_loss
    say(f"held-out loss: fp32 {fp32_loss:.4f}, post-training ternary {ptq_loss:.4f}")

    ternarised: list[str] = []

    def prepare(model: ReferenceVLA) -> None:
        ternarised.extend(ternarise_model(model))

    result = train(
        demos,
        train_config(cfg),
        initial=initial,
        prepare=prepare,
        on_log=lambda step, loss: say(f"qat iter {step} flow loss {loss:.4f}"),
    )
    say(f"qat: {result.iterations} iterations in {result.seconds:.0f} s, held-out loss {result.held_out_loss:.4f}")

    train_rows, held_rows = split_by_episode(demos, TrainConfig.held_out_fraction, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sampled = rng.choice(train_rows, size=min(cfg.stats_frames, len(train_rows)), replace=False)
    held = rng.choice(held_rows, size=min(cfg.held_out_observations, len(held_rows)), replace=False)
    stats = embedding_stats(
        ternary_embeddings(result.model, demos, sampled, result.vocabulary),
        ternary_embeddings(result.model, demos, held, result.vocabulary),
    )
    latent_result = replace(result, model=remove_ternarisation(result.model).eval())

    cfg.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(latent_result, cfg.out / "checkpoint.pt")
    latent = write_latent_bundle(latent_result, manifest, stats, cfg, cfg.out / "latent")
    ternary = build_ternary(latent, cfg.out / "bundle", method=METHOD)
    logging.getLogger().setLevel(logging.WARNING)  # importing onnxruntime's quantizer turned the root logger up
    record = QatRecord(
        iterations=result.iterations,
        train_seconds=round(result.seconds, 1),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        ternarised=ternarised,
        demo_chains=demos.num_episodes,
        demo_frames=len(demos),
        held_out_loss_fp32=round(fp32_loss, 5),
        held_out_loss_post_training_ternary=round(ptq_loss, 5),
        held_out_loss_qat_ternary=round(result.held_out_loss, 5),
        history=result.history,
        latent_bundle=str(latent),
        ternary_bundle=str(ternary),
        created_utc=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    )
    (cfg.out / "qat.json").write_text(json.dumps(asdict(record), indent=2) + "\n")
    say(f"ternary bundle: {ternary}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.ternary.qat", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "work" / "ternary-qat")
    parser.add_argument("--checkpoint", type=Path, default=QatConfig.checkpoint, help="trained reference checkpoint")
    parser.add_argument("--bundle", type=Path, default=QatConfig.bundle, help="the bundle built from that checkpoint")
    parser.add_argument("--work", type=Path, default=QatConfig.work, help="where models.build cached the demos")
    parser.add_argument("--iterations", type=int, help=f"fine-tuning iterations (default {QatConfig.iterations})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default {QatConfig.lr})")
    parser.add_argument("--max-seconds", type=float, help="stop fine-tuning when this budget is spent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, help=f"demo chains (default {QatConfig.chains}, the reference's)")
    parser.add_argument("--recovery-chains", type=int, help=f"recovery chains (default {QatConfig.recovery_chains})")
    parser.add_argument("--batch-size", type=int, help=f"default {QatConfig.batch_size}")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where to fine-tune (default cpu)")
    parser.add_argument("--quick", action="store_true", help="a few iterations on two fresh chains (seconds)")
    args = parser.parse_args(argv)
    overrides = {
        "checkpoint": args.checkpoint,
        "bundle": args.bundle,
        "work": args.work,
        "iterations": args.iterations,
        "lr": args.lr,
        "max_seconds": args.max_seconds,
        "seed": args.seed,
        "chains": args.chains,
        "recovery_chains": args.recovery_chains,
        "batch_size": args.batch_size,
        "device": args.device,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = QatConfig.quick(args.out, **overrides) if args.quick else QatConfig(out=args.out, **overrides)
    try:
        run(cfg)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
