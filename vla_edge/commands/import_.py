"""``vla-edge import lerobot PRETRAINED_DIR --out BUNDLE``: a LeRobot policy (ACT, Diffusion Policy, SmolVLA, π0,
π0.5) → a signed schema-2 bundle, gated on parity against LeRobot's own ``predict_action_chunk``.

The export needs torch and LeRobot, which the runtime never imports: this command runs
``python -m models.lerobot.importer`` in the LeRobot environment (``scripts/setup-lerobot.sh`` makes it) and passes
its output through. See docs/import-lerobot.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from vla_edge.errors import VlaEdgeError
from vla_edge.importers.lerobot_options import add_import_arguments
from vla_edge.paths import REPO_ROOT

VENV_ENV = "VLA_EDGE_LEROBOT_VENV"
DEFAULT_VENV = REPO_ROOT / ".venv-lerobot"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import", help="import a policy trained elsewhere as a signed bundle")
    sources = parser.add_subparsers(dest="import_source", metavar="SOURCE", required=True)
    lerobot = sources.add_parser(
        "lerobot", help="a LeRobot pretrained_model folder (ACT, Diffusion Policy, SmolVLA, π0, π0.5)",
        description="Export a LeRobot checkpoint to ONNX (fp32, int8, int4), check every variant against LeRobot's "
        "own predict_action_chunk on the same weights, observations and noise, and write a signed schema-2 bundle. "
        "Runs in the LeRobot environment made by scripts/setup-lerobot.sh.",
    )
    add_import_arguments(lerobot)
    lerobot.add_argument("--lerobot-venv", type=Path, default=None,
                         help=f"the LeRobot environment (default ${VENV_ENV}, else {DEFAULT_VENV})")
    lerobot.set_defaults(func=run)


def lerobot_python(explicit: Path | None) -> Path:
    """The LeRobot environment's interpreter, or a VlaEdgeError that says how to make one."""
    venv = explicit or (Path(os.environ[VENV_ENV]) if os.environ.get(VENV_ENV) else DEFAULT_VENV)
    python = venv / "bin" / "python"
    if not python.exists():
        raise VlaEdgeError(
            f"no LeRobot environment at {venv}: run scripts/setup-lerobot.sh (about 5 minutes), or point "
            f"--lerobot-venv / ${VENV_ENV} at one"
        )
    return python


def run(args: argparse.Namespace) -> int:
    python = lerobot_python(args.lerobot_venv)
    if not args.pretrained_dir.is_dir():
        raise VlaEdgeError(f"{args.pretrained_dir} is not a folder (expected LeRobot's .../pretrained_model)")
    if args.key is None and not args.unsigned:
        raise VlaEdgeError("pass --key PRIVATE.pem to sign the bundle (make one with `vla-edge bundle keygen`), "
                           "or --unsigned for a development bundle")
    env = dict(os.environ)
    # The worktree's code, not whatever copy the environment was installed from.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a model hub
    done = subprocess.run([str(python), "-m", "models.lerobot.importer", *child_argv(args)], env=env, check=False)
    return done.returncode


def child_argv(args: argparse.Namespace) -> list[str]:
    """The parsed import options as the exporter's command line (it parses the same options)."""
    argv = [str(args.pretrained_dir), "--out", str(args.out), "--precisions", ",".join(args.precisions),
            "--version", args.version, "--observations", str(args.observations), "--seed", str(args.seed),
            "--threads", str(args.threads)]
    for flag, value in (("--key", args.key), ("--fps", args.fps), ("--name", args.name),
                        ("--tokenizer", args.tokenizer), ("--vlm", args.vlm), ("--max-seconds", args.max_seconds),
                        ("--work", args.work), ("--layers-per-block", args.layers_per_block),
                        ("--dataset", args.dataset)):
        if value is not None:
            argv += [flag, str(value)]
    for flag, values in (("--state-names", args.state_names), ("--action-names", args.action_names)):
        if values:
            argv += [flag, ",".join(values)]
    for flag, bounds in (("--cosine-bounds", args.cosine_bounds), ("--mae-bounds", args.mae_bounds)):
        if bounds:
            argv += [flag, ",".join(f"{k}={v}" for k, v in bounds.items())]
    for flag in ("force", "unsigned", "random_weights"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    return argv
