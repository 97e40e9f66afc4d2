"""Benchmarks: every figure is a ratio measured side by side in one run; absolute times are context only.

``vla-edge bench`` (vla_edge/commands/bench.py) runs the parts listed in ``bench.suite.PARTS``; each part writes
``<name>.json`` and ``<name>.png`` into the output directory and prints a table. See docs/benchmarks.md.
"""
