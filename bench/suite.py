"""Runs the benchmark parts in order and prints which targets each met; the CLI and CI call ``run_parts``."""

from __future__ import annotations

import datetime
import importlib
import json
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
    "real": "bench.real_vlas",
}


def run_parts(cfg: BenchConfig, parts: list[str]) -> dict[str, Any]:
    """Run ``parts`` (names from PARTS) in the given order; writes summary.json with every target's outcome."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise BenchError(f"unknown bench part(s): {', '.join(unknown)}; choose from: {', '.join(PARTS)}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    summary = _previous_summary(cfg)
    for name in parts:
        started = time.monotonic()
        result = importlib.import_module(PARTS[name]).run(cfg)
        summary["parts"][name] = {
            "seconds": round(time.monotonic() - started, 1),
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "targets_met": result.get("targets_met", {}),
            "skipped": result.get("skipped"),
        }
    write_json(cfg.out / "summary.json", summary)
    console.print("[bold]targets[/bold]")
    for name, part in summary["parts"].items():
        if name not in parts:
            continue
        if part["skipped"]:
            console.print(f"  {name}: skipped ({part['skipped']})")
        for target, ok in part["targets_met"].items():
            console.print(f"  {name}: {target}: {'MET' if ok else 'MISSED'}")
        console.print(f"  {name}: {part['seconds']} s")
    return summary


def _previous_summary(cfg: BenchConfig) -> dict[str, Any]:
    """The summary already in ``cfg.out`` from a run of the same kind (quick or full), so that running some parts
    updates their entries and keeps the others; a fresh one otherwise."""
    path = cfg.out / "summary.json"
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and previous.get("quick") == cfg.quick and isinstance(previous.get("parts"), dict):
        return previous
    return {"quick": cfg.quick, "parts": {}}
