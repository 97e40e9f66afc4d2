"""The ``vla-edge`` command line: a thin shell over the modules; each sub-command lives in vla_edge/commands/."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from vla_edge import __version__, commands
from vla_edge.errors import VlaEdgeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-edge",
        description="Run a quantized VLA policy on the robot's board: camera → policy → confidence → motors.",
    )
    parser.add_argument("--version", action="version", version=f"vla-edge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.add_parser(subparsers)
    return parser


NO_ONNXRUNTIME = ("vla-edge: error: ONNX Runtime is not installed: pip install 'vla-edge[cpu]' for PyPI's CPU "
                 "build, or your board's GPU build (Jetson: deploy/jetson/setup.sh)")


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # sub-commands import the runtime (ONNX Runtime among it) as they load
    except ModuleNotFoundError as exc:
        if exc.name != "onnxruntime":
            raise
        print(NO_ONNXRUNTIME, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VlaEdgeError as exc:
        print(f"vla-edge: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name != "onnxruntime":
            raise
        print(NO_ONNXRUNTIME, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vla-edge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
