"""``vla-edge bench``: speed, memory and timing benchmarks (ratios measured side by side in one run).

The parts live in ``bench/`` (a development tool, shipped in the source checkout); each writes JSON and a PNG into
``--out`` and prints a table. Parts that measure PyTorch or build models need the ``[train]`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vla_edge.errors import VlaEdgeError

DEFAULT_PARTS = ["reference", "scale", "jitter", "prefix", "ternary", "gpu"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmarks: PyTorch eager vs ONNX Runtime, scale model, 50 Hz jitter, prefix reuse, ternary"
    )
    parser.add_argument("--quick", action="store_true", help="short runs and the small scale model (CI, < 5 min)")
    parser.add_argument(
        "--parts", nargs="+", default=DEFAULT_PARTS, metavar="PART",
        help=f"which parts, in order (default: {', '.join(DEFAULT_PARTS)}); also 'real': LeRobot's ACT, Diffusion "
        "Policy, SmolVLA and pi0 at real size (RANDOM WEIGHTS) vs their imported bundles (needs the LeRobot "
        "environment and hours; docs/import-lerobot.md)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="JSON + PNG go here")
    parser.add_argument("--work", type=Path, default=Path("models/work/bench"), help="scratch (built models)")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to measure (default: the reference)")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads per variant, the same for all (default 2; parts other than "
                        "the reference policy keep 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from bench.common import BenchConfig
        from bench.suite import run_parts
    except ImportError as exc:
        raise VlaEdgeError(
            f"the benchmarks are not importable ({exc}); run from a source checkout installed with "
            "`pip install -e '.[dev]'`"
        ) from None
    config = BenchConfig(out=args.out, work=args.work, quick=args.quick, bundle=args.bundle, threads=args.threads)
    run_parts(config, list(args.parts))
    return 0
