"""Benchmarks: each prints ratios measured in one run and writes JSON (and a PNG where a plot helps)."""
