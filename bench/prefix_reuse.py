"""Part 4: per-chunk latency with the constant instruction's features cached vs recomputed every chunk.

The runtime encodes an instruction once per step (``PolicyRunner.set_instruction`` caches it); the alternative
tokenises and runs the instruction encoder for every chunk. Both run in their own process, interleaved, same
threads, for fp32, int8 and int4. The reference policy's instruction encoder is a bag-of-words MLP, tiny next
to the observation encoder and the K-sample denoising loop, so the ratio here is small; where a model's
instruction prefix is a large language model (the scale model's prefill, part 2) the saving is the prefill.

    python -m bench.prefix_reuse [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import (
    THREADS,
    BenchConfig,
    Worker,
    console,
    instruction_for,
    interleaved_rounds,
    latency_stats,
    machine_info,
    met,
    print_table,
    pyplot,
    reference_bundle,
    write_json,
)

NAME = "prefix_reuse"
TARGET = 2.0
SAMPLES = 8


def run(cfg: BenchConfig) -> dict[str, Any]:
    bundle = reference_bundle(cfg.bundle, cfg.work)
    instruction = instruction_for(bundle)
    precisions = ("int8",) if cfg.quick else ("fp32", "int8", "int4")
    rounds, per_round = (4, 4) if cfg.quick else (20, 10)
    console.print(f"[bold]{NAME}[/bold]: {bundle}, {', '.join(precisions)}, {rounds} interleaved rounds")
    workers: list[Worker] = []
    try:
        for precision in precisions:
            for mode in ("cached", "recomputed"):
                spec = {
                    "kind": "ort", "bundle": str(bundle), "precision": precision, "samples": SAMPLES,
                    "instruction": instruction, "threads": THREADS, "seed": 0,
                    "recompute_instruction": mode == "recomputed",
                }
                workers.append(Worker.start(f"{precision}/{mode}", spec))
        timings = interleaved_rounds(workers, rounds, per_round)
    finally:
        for worker in workers:
            worker.close()
    rows = {}
    for precision in precisions:
        cached = latency_stats(timings[f"{precision}/cached"])
        recomputed = latency_stats(timings[f"{precision}/recomputed"])
        rows[precision] = {
            "cached": cached,
            "recomputed": recomputed,
            "speedup_cached": round(recomputed["median_ms"] / cached["median_ms"], 3),
        }
    best = max(r["speedup_cached"] for r in rows.values())
    result = {
        "part": NAME,
        "quick": cfg.quick,
        "bundle": str(bundle),
        "what": f"one chunk (K={SAMPLES}) with the instruction features cached vs the instruction encoder rerun",
        "machine": machine_info(),
        "variants": rows,
        "targets_met": {f"cached >= {TARGET}x faster (reference policy)": met(best, TARGET)},
    }
    _report(result, cfg.out)
    return result


def _report(result: dict[str, Any], out: Path) -> None:
    table_rows = [
        [p, f"{r['cached']['median_ms']:.3f}", f"{r['recomputed']['median_ms']:.3f}", f"{r['speedup_cached']:.3f}x"]
        for p, r in result["variants"].items()
    ]
    caption = "; ".join(f"{k}: {'MET' if ok else 'MISSED'}" for k, ok in result["targets_met"].items())
    print_table("instruction features cached vs recomputed, per chunk (median ms)",
                ["variant", "cached", "recomputed", "speed-up"], table_rows, caption)
    write_json(out / f"{NAME}.json", result)
    plt = pyplot()
    if plt is None:
        return
    import numpy as np

    names = list(result["variants"])
    x = np.arange(len(names))
    fig, axis = plt.subplots(figsize=(6, 4))
    axis.bar(x - 0.2, [result["variants"][n]["cached"]["median_ms"] for n in names], 0.4, label="cached")
    axis.bar(x + 0.2, [result["variants"][n]["recomputed"]["median_ms"] for n in names], 0.4, label="recomputed")
    axis.set_xticks(x, names)
    axis.set_ylabel("median ms per chunk")
    axis.set_title("reference policy: instruction prefix reuse")
    axis.legend()
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prefix_reuse", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path("models/work/bench"))
    parser.add_argument("--bundle", type=Path, default=None)
    args = parser.parse_args(argv)
    run(BenchConfig(out=args.out, work=args.work, quick=args.quick, bundle=args.bundle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
