"""The options of ``vla-edge import lerobot``, shared by the command (main venv, no torch) and the exporter that
runs in the LeRobot environment (``python -m models.lerobot.importer``), so both accept exactly the same flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PRECISION_CHOICES = ("fp32", "int8", "int4")

# Parity bounds per variant against LeRobot's own output (same weights, observation and noise): cosine of the
# flattened chunk, and mean |a - a_ref| in normalised action units (what the graphs compute; physical units
# differ per robot). fp32 and int8 cosine are the targets; int4 and the MAE bounds are this project's
# (fp32: an exact export measures 1e-7..1e-5 here; a wrong prompt template gave 1e-3 on a random-weight π0.5).
DEFAULT_COSINE_BOUNDS = {"fp32": 0.999, "int8": 0.99, "int4": 0.95}
DEFAULT_MAE_BOUNDS = {"fp32": 1e-3, "int8": 0.1, "int4": 0.25}


def _csv(text: str) -> list[str]:
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _precisions(text: str) -> list[str]:
    items = _csv(text)
    bad = [p for p in items if p not in PRECISION_CHOICES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown precision(s) {', '.join(bad)}; choose from {', '.join(PRECISION_CHOICES)}")
    if "fp32" not in items:
        items.insert(0, "fp32")  # the reference variant every bundle has
    return items


def _bounds(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in _csv(text):
        name, _, value = item.partition("=")
        if name not in PRECISION_CHOICES or not value:
            raise argparse.ArgumentTypeError(f"expected precision=value pairs (e.g. int8=0.99), got {item!r}")
        try:
            out[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: {value!r} is not a number") from None
    return out


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of the LeRobot import (the LeRobot-venv exporter parses the same ones)."""
    parser.add_argument("pretrained_dir", type=Path,
                        help="the folder LeRobot saved: .../checkpoints/NNN/pretrained_model (0.3.x or 0.4.x+ layout)")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (must not exist, or --force)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--key", type=Path, default=None, help="ed25519 private key (PEM) to sign the bundle with")
    parser.add_argument("--unsigned", action="store_true", help="write the bundle without a signature (development)")
    parser.add_argument("--fps", type=float, default=None,
                        help="control rate the policy was trained at (the dataset's fps); read from train_config.json "
                        "when it says, else required")
    parser.add_argument("--precisions", type=_precisions, default=list(PRECISION_CHOICES),
                        help="variants to build, comma-separated (fp32 always; default fp32,int8,int4)")
    parser.add_argument("--name", default=None, help="bundle name (default: policy type + folder name)")
    parser.add_argument("--version", default="1", help="bundle version string (default 1)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer.json to ship (default: the one LeRobot's processor loads for this checkpoint)")
    parser.add_argument("--vlm", type=Path, default=None,
                        help="SmolVLA: a local folder with the VLM's config and processor files, when the checkpoint "
                        "names a hub model (vlm_model_name) that this machine cannot download")
    parser.add_argument("--state-names", type=_csv, default=None, help="names of the state vector, comma-separated")
    parser.add_argument("--action-names", type=_csv, default=None, help="names of the action vector, comma-separated")
    parser.add_argument("--dataset", type=Path, default=None,
                        help="the LeRobot dataset the policy was trained on: the default state/action names, and the "
                        "instruction words of an environment-state input recorded by vla-edge (recorder."
                        "instruction_words; ACT / Diffusion Policy have no language model)")
    parser.add_argument("--observations", type=int, default=8,
                        help="observations for the parity gate (default 8); each is one chunk on every variant")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity observations and noise")
    parser.add_argument("--cosine-bounds", type=_bounds, default={},
                        help=f"minimum parity cosine per variant, e.g. int8=0.99 (defaults {DEFAULT_COSINE_BOUNDS})")
    parser.add_argument("--mae-bounds", type=_bounds, default={},
                        help=f"maximum parity MAE per variant in normalised action units (defaults {DEFAULT_MAE_BOUNDS})")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime / torch threads for the parity runs")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="step_end.max_seconds: how long the policy runs on one task step (default: none; the "
                        "task runner's own check ends the step)")
    parser.add_argument("--layers-per-block", type=int, default=None,
                        help="π0 / π0.5: backbone layers per exported prefix graph (default: about 1.6 GB of fp32 "
                        "weights per graph, 3 layers of Gemma 2B)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--random-weights", action="store_true",
                        help="label the bundle RANDOM WEIGHTS (set automatically for checkpoints made by "
                        "models.lerobot.fixtures)")

