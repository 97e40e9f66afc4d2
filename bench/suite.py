"""Runs the benchmark parts in order and prints which targets each met; the CLI and CI call ``run_parts``."""

from __future__ import annotations

import importlib
import time
from typing import Any

from bench.common import BenchConfig, BenchError, console, write_json

# name → module (each has ``run(BenchConfig) -> dict``); imported only when asked for, so a part that needs
# torch never loads it for the others.
PARTS: dict[str, str] = {
    "reference": "bench.reference_policy",
    "scale": "bench.scale_model",
    "jitter": "bench.jitter",
    "prefix": "bench.prefix_reuse",
    "ternary": "bench.ternary",
    "gpu": "bench.gpu",
}


def run_parts(cfg: BenchConfig, parts: list[str]) -> dict[str, Any]:
    """Run ``parts`` (names from PARTS) in the given order; writes summary.json with every target's outcome."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise BenchError(f"unknown bench part(s): {', '.join(unknown)}; choose from: {', '.join(PARTS)}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"quick": cfg.quick, "parts": {}}
    for name in parts:
        started = time.monotonic()
        result = importlib.import_module(PARTS[name]).run(cfg)
        summary["parts"][name] = {
            "seconds": round(time.monotonic() - started, 1),
            "targets_met": result.get("targets_met", {}),
            "skipped": result.get("skipped"),
        }
    write_json(cfg.out / "summary.json", summary)
    console.print("[bold]targets[/bold]")
    for name, part in summary["parts"].items():
        if part["skipped"]:
            console.print(f"  {name}: skipped ({part['skipped']})")
        for target, ok in part["targets_met"].items():
            console.print(f"  {name}: {target}: {'MET' if ok else 'MISSED'}")
        console.print(f"  {name}: {part['seconds']} s")
    return summary
