"""Part 4: prefix reuse: per-chunk latency with the constant instruction's prefix cached vs recomputed.

Where it matters, a scale model (part 2's ~2B pi0-shaped model, RANDOM WEIGHTS, int4): the instruction's tokens
run through the backbone with the image's, prefix ordered [instruction | image] with block-causal attention, so the
instruction's keys/values in every layer do not depend on the image. "cached" computes them once per instruction
and each chunk runs the backbone over the image tokens only (attending to the cached keys/values), then the
denoising steps; "recomputed" runs the whole prefix every chunk. Chunk = prefill + all denoising steps (10 Euler
steps at the model's horizon). Each mode runs in its own process, interleaved, same threads. The prefill alone is
timed too: its ratio is bounded by (instruction + image tokens) / image tokens, and the steps (which read the same
prefix either way) dilute it further. Token counts: 48 instruction tokens (pi0's prompt budget) and 64 or 256
image tokens (one camera pooled to 8x8, or one 224 px camera at PaliGemma's 16x16 patches).

The reference policy's instruction cache (``PolicyRunner.set_instruction``) is timed too, for context: its
instruction encoder is a bag-of-words MLP, so caching it saves almost nothing.

    python -m bench.prefix_reuse [--quick] [--out bench/results]     # full: the 2B model (built once, ~2 min)
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
INSTRUCTION_TOKENS = 48
IMAGE_TOKENS = (64, 256)
DENOISING_STEPS = 10
NOISE_MARGIN = 1.25  # attention adds a little beyond the linear token bound; much more than this is noise


def run(cfg: BenchConfig) -> dict[str, Any]:
    scale = _scale_part(cfg)
    reference = _reference_part(cfg)
    # A prefill ratio well beyond the token bound is machine noise (another job slowed one mode), not caching:
    # such a split is reported but never counted as meeting the target.
    targets = {
        f"scale model, {split}: cached chunk >= {TARGET}x faster": met(row["chunk_speedup"], TARGET)
        and not row["beyond_token_bound"]
        for split, row in scale["splits"].items()
    }
    targets[f"reference policy: cached >= {TARGET}x faster"] = met(
        max(r["speedup_cached"] for r in reference["variants"].values()), TARGET
    )
    result = {
        "part": NAME,
        "quick": cfg.quick,
        "machine": machine_info(),
        "scale": scale,
        "reference": reference,
        "targets_met": targets,
    }
    _report(result, cfg.out)
    return result


def _params(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def _split_name(words: int, patches: int) -> str:
    return f"{words} instruction | {patches} image tokens"


def _scale_part(cfg: BenchConfig) -> dict[str, Any]:
    import json

    from bench.scale_model import ensure_model

    directory = ensure_model(cfg)
    info = json.loads((directory / "scale_model.json").read_text())
    splits = [(INSTRUCTION_TOKENS, p) for p in IMAGE_TOKENS]
    rounds = 3
    console.print(
        f"[bold]{NAME}[/bold]: scale model {directory} ({_params(info['parameters']['total'])}, RANDOM WEIGHTS), "
        f"splits {splits}, {DENOISING_STEPS} steps at horizon {info['config']['horizon']}, {rounds} interleaved rounds"
    )
    workers: list[Worker] = []
    try:
        for mode in ("cached", "recomputed"):
            spec = {"kind": "scale_prefix", "dir": str(directory), "threads": THREADS, "mode": mode,
                    "splits": [list(s) for s in splits], "steps": DENOISING_STEPS}
            workers.append(Worker.start(mode, spec))
        timings: dict[str, list[float]] = {}
        for r in range(rounds):
            order = workers if r % 2 == 0 else workers[::-1]
            for words, patches in splits:
                for what in ("prefill", "chunk"):
                    for worker in order:
                        key = f"{worker.name}/{what}:{words}:{patches}"
                        timings.setdefault(key, []).extend(
                            worker.request(op="run", what=f"{what}:{words}:{patches}", n=1)["ms"]
                        )
    finally:
        for worker in workers:
            worker.close()
    rows: dict[str, Any] = {}
    for words, patches in splits:
        stats = {
            f"{mode}_{what}": latency_stats(timings[f"{mode}/{what}:{words}:{patches}"])
            for mode in ("cached", "recomputed")
            for what in ("prefill", "chunk")
        }
        rows[_split_name(words, patches)] = {
            "instruction_tokens": words,
            "image_tokens": patches,
            **stats,
            "prefill_speedup": round(stats["recomputed_prefill"]["median_ms"] / stats["cached_prefill"]["median_ms"], 3),
            "chunk_speedup": round(stats["recomputed_chunk"]["median_ms"] / stats["cached_chunk"]["median_ms"], 3),
            # Prefill cost is ~linear in tokens (matmuls dominate), so reuse can at best remove the instruction's share.
            "prefill_speedup_bound_from_tokens": round((words + patches) / patches, 3),
        }
        rows[_split_name(words, patches)]["beyond_token_bound"] = bool(
            rows[_split_name(words, patches)]["prefill_speedup"] > NOISE_MARGIN * (words + patches) / patches
        )
    return {
        "model_dir": str(directory),
        "label": info["label"],
        "parameters": info["parameters"],
        "config": info["config"],
        "denoising_steps": DENOISING_STEPS,
        "horizon": info["config"]["horizon"],
        "rounds": rounds,
        "what": "one chunk = prefill (cached instruction keys/values + image tokens, or the whole prefix) + "
        f"{DENOISING_STEPS} denoising steps; median ms",
        "splits": rows,
    }


def _reference_part(cfg: BenchConfig) -> dict[str, Any]:
    bundle = reference_bundle(cfg.bundle, cfg.work)
    instruction = instruction_for(bundle)
    precisions = ("int8",) if cfg.quick else ("fp32", "int8", "int4")
    rounds, per_round = (4, 4) if cfg.quick else (20, 10)
    console.print(f"[bold]{NAME}[/bold]: reference {bundle}, {', '.join(precisions)}, {rounds} interleaved rounds")
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
    return {
        "bundle": str(bundle),
        "what": f"one chunk (K={SAMPLES}) with the instruction features cached vs the instruction encoder rerun",
        "variants": rows,
    }


def _report(result: dict[str, Any], out: Path) -> None:
    scale = result["scale"]
    caption = "\n".join(f"{k}: {'MET' if ok else 'MISSED'}" for k, ok in result["targets_met"].items())
    print_table(
        f"scale model ({_params(scale['parameters']['total'])}, RANDOM WEIGHTS, int4): instruction prefix cached vs "
        f"recomputed; chunk = prefill + {scale['denoising_steps']} steps at horizon {scale['horizon']} (median ms)",
        ["split", "prefill cached", "prefill recomputed", "prefill speed-up (token bound)", "chunk cached",
         "chunk recomputed", "chunk speed-up"],
        [
            [split, f"{r['cached_prefill']['median_ms']:.1f}", f"{r['recomputed_prefill']['median_ms']:.1f}",
             f"{r['prefill_speedup']:.2f}x ({r['prefill_speedup_bound_from_tokens']:.2f}x)"
             + (" NOISY: beyond the token bound" if r["beyond_token_bound"] else ""),
             f"{r['cached_chunk']['median_ms']:.1f}", f"{r['recomputed_chunk']['median_ms']:.1f}",
             f"{r['chunk_speedup']:.2f}x"]
            for split, r in scale["splits"].items()
        ],
    )
    print_table(
        "reference policy: instruction features cached vs recomputed, per chunk (median ms)",
        ["variant", "cached", "recomputed", "speed-up"],
        [[p, f"{r['cached']['median_ms']:.3f}", f"{r['recomputed']['median_ms']:.3f}", f"{r['speedup_cached']:.3f}x"]
         for p, r in result["reference"]["variants"].items()],
        caption,
    )
    write_json(out / f"{NAME}.json", result)
    plt = pyplot()
    if plt is None:
        return
    import numpy as np

    names = list(scale["splits"])
    x = np.arange(len(names))
    fig, axis = plt.subplots(figsize=(8, 4))
    for offset, mode, colour in ((-0.2, "cached", "tab:blue"), (0.2, "recomputed", "tab:orange")):
        chunk = [scale["splits"][n][f"{mode}_chunk"]["median_ms"] for n in names]
        prefill = [scale["splits"][n][f"{mode}_prefill"]["median_ms"] for n in names]
        axis.bar(x + offset, prefill, 0.4, color=colour, label=f"{mode}: prefill")
        axis.bar(x + offset, np.subtract(chunk, prefill), 0.4, bottom=prefill, color=colour, alpha=0.45,
                 label=f"{mode}: denoising steps")
    axis.set_xticks(x, [f"{n}\n{scale['splits'][n]['chunk_speedup']:.2f}x per chunk" for n in names])
    axis.set_ylabel("median ms per chunk")
    axis.set_title(f"scale model (RANDOM WEIGHTS): instruction prefix reuse, {THREADS} threads")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prefix_reuse", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small scale model (seconds)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work", type=Path, default=Path("models/work/bench"))
    parser.add_argument("--bundle", type=Path, default=None)
    args = parser.parse_args(argv)
    run(BenchConfig(out=args.out, work=args.work, quick=args.quick, bundle=args.bundle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
