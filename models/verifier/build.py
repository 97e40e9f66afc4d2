"""Build the checkpoint verifier bundle: rollouts → windows → training → ONNX → calibrated thresholds → bundle.

    python -m models.verifier.build                          # models/bundles/reference-verifier (~15 min, 2 cores)
    python -m models.verifier.build --quick --out /tmp/v     # tiny smoke build (a minute; thresholds uncalibrated)

Training rollouts come from seed root 3000, calibration rollouts from 1000 (docs/evaluation-seeds.md); the
evaluation roots are never touched here. The policy (the reference bundle, int8) runs alone on the robot's own
executor in simulated time (``models.verifier.data``). Thresholds (``vla_edge.verifier``): split conformal on the
calibration chains' real windows (each step alone, and the checkpoint segments of ``--checkpoint-every``): the
accept threshold for a stated false-accept rate on failed windows, the reject threshold for a stated false-reject
rate on successful ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from models.verifier import data as vdata
from models.verifier.net import (
    MAX_WORDS,
    CheckpointVerifierNet,
    TrainConfig,
    VerifierConfig,
    Windows,
    count_parameters,
    export_onnx,
    load_weights,
    perceive,
    predict_head,
    save_weights,
    train_head,
    train_perception,
)
from vla_edge.calibration import auroc, conformal_threshold
from vla_edge.paths import MODELS_DIR, REFERENCE_BUNDLE_DIR, REFERENCE_VERIFIER_DIR
from vla_edge.simulation import base_monitor, open_policy, simulation_settings
from vla_edge.tokenizer import WordTokenizer
from vla_edge.verifier import (
    CheckpointVerifier,
    VerifierCalibration,
    VerifierManifest,
    graph_sha256,
    write_verifier_manifest,
)

TRAIN_SEED = 3000
CALIBRATION_SEED = 1000
NAME, VERSION = "reference-verifier", "0.1.0"


def collect(seed: int, chains: int, precision: str, work: Path, console) -> list[vdata.ChainRecord]:
    """Rollouts of ``chains`` chains of seed root ``seed``, cached in ``work`` (they take ~0.25 s a chain)."""
    path = work / f"verifier-rollouts-{precision}-s{seed}-{chains}.npz"
    if path.exists():
        return vdata.load(path)
    bundle, runner = open_policy(REFERENCE_BUNDLE_DIR, precision, threads=1)
    monitor = base_monitor(bundle)
    settings = simulation_settings(bundle.manifest)
    rng = np.random.default_rng([seed, 77])
    started = time.perf_counter()
    records = []
    for index in range(chains):
        records.append(vdata.roll_out(seed, index, runner, monitor, settings, rng))
        if (index + 1) % 50 == 0:
            console(f"  rollouts seed {seed}: {index + 1}/{chains} ({time.perf_counter() - started:.0f} s)")
    vdata.save(records, path)
    return records


class WindowArrays:
    """Windows as arrays: scene indices into one frame stack (with each scene's simulator state, the perception's
    training labels), tokens, labels, and the bins behind the labels (for instruction swaps)."""

    def __init__(self, records: list[vdata.ChainRecord], windows: list[vdata.Window], tokenizer: WordTokenizer,
                 max_steps: int) -> None:
        from hil.world import BINS, COLOURS

        scenes: dict[int, int] = {}
        frames: list[np.ndarray] = []
        places: list[list[int]] = []
        held: list[int] = []

        def index_of(scene: vdata.Scene) -> int:
            key = id(scene)
            if key not in scenes:
                scenes[key] = len(frames)
                frames.append(scene.frame)
                places.append([BINS.index(scene.bins[c]) if scene.bins[c] else len(BINS) for c in COLOURS])
                held.append(COLOURS.index(scene.held) + 1 if scene.held else 0)
            return scenes[key]

        before, after, labels, instructions = [], [], [], []
        self.start_bins, self.end_bins, self.end_held = [], [], []
        for window in windows:
            start, end, texts = vdata.window_scenes(records, window)
            before.append(index_of(start))
            after.append(index_of(end))
            labels.append(vdata.as_expected(start, texts, end))
            instructions.append(texts)
            self.start_bins.append(start.bins)
            self.end_bins.append(end.bins)
            self.end_held.append(end.held)
        self.tokenizer = tokenizer
        self.instructions = instructions
        tokens = np.zeros((len(windows), max_steps, MAX_WORDS), dtype=np.int64)
        for i, texts in enumerate(instructions):
            tokens[i, : len(texts)] = tokenizer.encode_padded(list(texts), MAX_WORDS)
        self.frames = np.stack(frames)
        self.places = np.asarray(places, dtype=np.int64)
        self.held = np.asarray(held, dtype=np.int64)
        self.windows = Windows(np.asarray(before), np.asarray(after), tokens, np.asarray(labels, dtype=np.float32))

    def make_swaps(self, rng: np.random.Generator, copies: int = 2) -> None:
        """For every window, ``copies`` variants with one instruction changed (another bin or another block), the
        label recomputed by the rule: negatives (and positives) the rollouts alone would rarely give. Made once;
        ``swapped`` draws from them per batch."""
        from hil.tasks import Step, parse_instruction
        from hil.world import BINS, COLOURS

        m = self.windows.labels.size
        self.swap_tokens = np.zeros((m, copies, *self.windows.tokens.shape[1:]), dtype=np.int64)
        self.swap_labels = np.zeros((m, copies), dtype=np.float32)
        for i in range(m):
            for copy in range(copies):
                texts = list(self.instructions[i])
                k = int(rng.integers(len(texts)))
                step = parse_instruction(texts[k])
                if rng.random() < 0.7:
                    step = Step(step.colour, BINS[int(rng.integers(len(BINS)))])
                else:
                    step = Step(COLOURS[int(rng.integers(len(COLOURS)))], step.bin)
                texts[k] = step.instruction
                start = vdata.Scene(np.zeros(0), self.start_bins[i], None)
                end = vdata.Scene(np.zeros(0), self.end_bins[i], self.end_held[i])
                self.swap_labels[i, copy] = float(vdata.as_expected(start, tuple(texts), end))
                self.swap_tokens[i, copy, : len(texts)] = self.tokenizer.encode_padded(texts, MAX_WORDS)

    def swapped(self, rng: np.random.Generator, index: np.ndarray, probability: float) -> tuple[np.ndarray, np.ndarray]:
        """A batch's tokens and labels with a share ``probability`` of its windows replaced by a swap variant."""
        tokens = self.windows.tokens[index].copy()
        labels = self.windows.labels[index].copy()
        chosen = rng.random(index.size) < probability
        if chosen.any():
            copy = rng.integers(self.swap_labels.shape[1], size=int(chosen.sum()))
            tokens[chosen] = self.swap_tokens[index[chosen], copy]
            labels[chosen] = self.swap_labels[index[chosen], copy]
        return tokens, labels


def calibrate(scores: np.ndarray, labels: np.ndarray, false_accept: float, false_reject: float
              ) -> tuple[float, float, dict[str, float]]:
    """Split conformal on held-out windows. Accept when P > a, a = the ceil((m+1)(1-alpha))-th smallest of the m
    failed windows' P: a new failed window is accepted with probability <= alpha. Reject when P < r, r = minus the
    same quantile of the n successful windows' -P at beta: a new good window is rejected with probability <= beta."""
    failed, good = scores[labels < 0.5], scores[labels >= 0.5]
    accept = conformal_threshold(failed, false_accept)
    if not np.isfinite(accept):
        raise SystemExit(f"{failed.size} failed calibration windows cannot promise a false-accept rate of "
                         f"{false_accept:g} (needs at least {int(np.ceil(1 / false_accept)) - 1}); roll out more")
    reject = -conformal_threshold(-good, false_reject)
    reject = min(reject, accept)
    figures = {
        "false_accept": float(np.mean(failed > accept)),
        "false_reject": float(np.mean(good < reject)),
        "unsure": float(np.mean((scores >= reject) & (scores <= accept))),
    }
    return float(accept), float(reject), figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.verifier.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REFERENCE_VERIFIER_DIR)
    parser.add_argument("--work", type=Path, default=MODELS_DIR / "work")
    parser.add_argument("--precision", default="int8", help="the policy variant whose rollouts are used")
    parser.add_argument("--train-chains", type=int, default=500)
    parser.add_argument("--calibration-chains", type=int, default=300)
    parser.add_argument("--perception-epochs", type=int, default=6)
    parser.add_argument("--head-epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--false-accept", type=float, default=0.05,
                        help="stated rate of failed windows the verifier may accept by itself (default 0.05)")
    parser.add_argument("--false-reject", type=float, default=0.02,
                        help="stated rate of good windows it may call failed (each costs a retry; default 0.02)")
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="12 + 8 chains, 1 epoch: a smoke build")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_chains, args.calibration_chains, args.perception_epochs, args.head_epochs = 12, 8, 1, 2
    say = print
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)

    policy_bundle, _ = open_policy(REFERENCE_BUNDLE_DIR, args.precision, threads=1)
    tokenizer = WordTokenizer(policy_bundle.manifest.vocabulary)
    say(f"rollouts: {args.train_chains} training chains (seed {TRAIN_SEED}), {args.calibration_chains} calibration "
        f"chains (seed {CALIBRATION_SEED}), policy {policy_bundle.manifest.name} {args.precision}")
    train_records = collect(TRAIN_SEED, args.train_chains, args.precision, args.work, say)
    calibration_records = collect(CALIBRATION_SEED, args.calibration_chains, args.precision, args.work, say)

    n_val = max(1, len(train_records) // 10)
    fit = WindowArrays(train_records[:-n_val], vdata.windows(train_records[:-n_val]), tokenizer, vdata.MAX_STEPS)
    val = WindowArrays(train_records[-n_val:], vdata.windows(train_records[-n_val:]), tokenizer, vdata.MAX_STEPS)
    say(f"scenes: {len(fit.frames)} to fit the perception; windows: {fit.windows.labels.size} to fit the head "
        f"({fit.windows.labels.mean():.0%} as expected), {val.windows.labels.size} to validate")

    cfg = VerifierConfig(vocabulary_size=len(tokenizer), max_steps=vdata.MAX_STEPS)
    model = CheckpointVerifierNet(cfg)
    train_cfg = TrainConfig(perception_epochs=args.perception_epochs, head_epochs=args.head_epochs,
                            threads=args.threads)
    cached = args.work / (f"verifier-perception-{args.precision}-s{TRAIN_SEED}-{args.train_chains}"
                          f"-e{args.perception_epochs}.npz")
    if cached.exists() and not args.quick:
        load_weights(model.perception, cached)
        perception_result = {"seconds": 0.0, "loss": float("nan")}
        say(f"perception weights from {cached}")
    else:
        perception_result = train_perception(model.perception, fit.frames, fit.places, fit.held, train_cfg,
                                             on_log=say)
        save_weights(model.perception, cached)
    val_states = perceive(model.perception, val.frames)
    val_places = val_states[:, :20].reshape(-1, 4, 5).argmax(-1)
    scene_accuracy = float(np.mean((val_places == val.places).all(-1)))
    say(f"perception on validation scenes: {scene_accuracy:.1%} fully right")
    fit.make_swaps(np.random.default_rng([TRAIN_SEED, 5]))
    head_result = train_head(model.head, perceive(model.perception, fit.frames), fit.windows, train_cfg,
                             augment=lambda rng, index: fit.swapped(rng, index, train_cfg.swap_probability),
                             on_log=say)
    p_val = predict_head(model.head, val_states, val.windows)
    accuracy = float(np.mean((p_val > 0.5) == (val.windows.labels > 0.5)))
    say(f"validation windows: accuracy {accuracy:.1%}, AUROC {auroc(-p_val, val.windows.labels < 0.5):.3f} "
        "(low P for failures)")
    result = {"seconds": perception_result["seconds"] + head_result["seconds"], "loss": head_result["loss"]}

    staging = args.out.with_name(args.out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    export_onnx(model, staging / "verifier.onnx")
    graph_bytes = (staging / "verifier.onnx").read_bytes()
    provisional = VerifierManifest(
        name=NAME, version=VERSION, policy=f"{policy_bundle.manifest.name} {policy_bundle.manifest.version}",
        sha256=graph_sha256(graph_bytes), vocabulary=list(tokenizer.vocabulary), image_size=cfg.image_size,
        max_steps=cfg.max_steps, max_words=cfg.max_words, accept_threshold=1.0, reject_threshold=0.0,
    )
    write_verifier_manifest(provisional, staging)
    runtime = CheckpointVerifier(staging)
    parity = max(abs(runtime.probability(val.instructions[i], val.frames[val.windows.before[i]],
                                         val.frames[val.windows.after[i]]) - float(p_val[i]))
                 for i in range(min(64, p_val.size)))
    say(f"ONNX vs torch: max |dP| {parity:.2e} over {min(64, p_val.size)} windows")

    cal = WindowArrays(calibration_records, vdata.checkpoint_windows(calibration_records, args.checkpoint_every),
                       tokenizer, vdata.MAX_STEPS)
    scores = np.array([runtime.probability(cal.instructions[i], cal.frames[cal.windows.before[i]],
                                           cal.frames[cal.windows.after[i]])
                       for i in range(cal.windows.labels.size)])
    labels = cal.windows.labels
    n_failed = int((labels < 0.5).sum())
    say(f"calibration windows: {labels.size} ({n_failed} failed), AUROC {auroc(-scores, labels < 0.5):.3f}")
    if args.quick and n_failed < int(np.ceil(1 / args.false_accept)) - 1:
        accept, reject, figures = 0.99, 0.01, {"false_accept": float("nan"), "false_reject": float("nan"),
                                               "unsure": float("nan")}
        method = "quick build: not calibrated (too few failed windows)"
    else:
        accept, reject, figures = calibrate(scores, labels, args.false_accept, args.false_reject)
        method = ("split conformal on held-out windows (each step, and checkpoint segments of "
                  f"{args.checkpoint_every}): accept above the failed windows' (1 - false_accept) quantile, reject "
                  "below the good windows' false_reject quantile")
    say(f"thresholds: accept P > {accept:.4f}, reject P < {reject:.4f}; on the calibration windows false accept "
        f"{figures['false_accept']:.1%}, false reject {figures['false_reject']:.1%}, unsure {figures['unsure']:.1%}")

    clean = {k: (None if not np.isfinite(v) else round(v, 6)) for k, v in figures.items()}
    manifest = provisional.model_copy(update={
        "accept_threshold": accept, "reject_threshold": reject,
        "description": "Checkpoint verifier for the reference world (frames before/after + instructions → "
                       f"P(as expected)); built {datetime.datetime.now(datetime.UTC):%Y-%m-%d}.",
        "calibration": VerifierCalibration(
            method=method, target_false_accept=args.false_accept, target_false_reject=args.false_reject,
            seed=CALIBRATION_SEED, chains=len(calibration_records), windows_as_expected=int(labels.size - n_failed),
            windows_failed=n_failed, **clean),
        "training": {
            "train_seed": TRAIN_SEED, "train_chains": len(train_records) - n_val, "validation_chains": n_val,
            "scenes": int(len(fit.frames)), "windows": int(fit.windows.labels.size),
            "perception_epochs": args.perception_epochs, "head_epochs": args.head_epochs,
            "perception_scene_accuracy": round(scene_accuracy, 5), "seconds": round(result["seconds"], 1),
            "parameters": count_parameters(model), "final_loss": round(result["loss"], 5),
            "validation_accuracy": round(accuracy, 5), "onnx_parity_max_abs": float(f"{parity:.3g}"),
            "policy_precision": args.precision, "threads": args.threads,
        },
    })
    write_verifier_manifest(manifest, staging)
    CheckpointVerifier(staging)  # loads: digest, thresholds
    if args.out.exists():
        shutil.rmtree(args.out)
    staging.rename(args.out)
    report = {"out": str(args.out), "seconds": round(time.perf_counter() - started, 1),
              "manifest": json.loads(manifest.model_dump_json())}
    (args.work / "verifier-build.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    say(f"wrote {args.out} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
