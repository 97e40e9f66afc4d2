"""The robot's code does not import the benchmarks: what runs on the robot (and `vla-edge calibrate`) is the one
executor, never a copy kept in bench/ (issue 14). Only `vla-edge bench`, the command that launches them, imports
bench/ when it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import importlib, pkgutil, sys
import vla_edge
imported, skipped = [], []
for info in pkgutil.walk_packages(vla_edge.__path__, "vla_edge."):
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except ImportError as exc:  # an optional extra not installed here
        skipped.append(f"{info.name}: {exc}")
from vla_edge.cli import build_parser
build_parser()  # every sub-command's parser, as `vla-edge --help` builds them
bench = sorted(m for m in sys.modules if m == "bench" or m.startswith("bench."))
print("IMPORTED", len(imported))
print("BENCH", *bench)
"""


@pytest.mark.slow  # imports every module in a fresh interpreter
def test_no_vla_edge_module_imports_bench():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True)
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
    assert int(lines["IMPORTED"][0]) >= 40, out.stdout  # the walk really imported the package
    assert lines["BENCH"] == [], f"vla_edge imports the benchmarks: {lines['BENCH']}"
