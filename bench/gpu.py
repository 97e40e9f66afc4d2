"""Part 6: the reference policy's latency table on a GPU: ONNX Runtime CUDA and TensorRT vs PyTorch eager on CUDA.

Runs only where a GPU is usable (ONNX Runtime's CUDA provider and/or torch.cuda); elsewhere it says "no GPU on
this machine" and writes that into its JSON. Same protocol as part 1: one process per variant, interleaved
rounds, per-chunk wall time including the copy of the result back to the host.

    python -m bench.gpu [--quick] [--out bench/results]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import (
    part_main,
    THREADS,
    BenchConfig,
    Worker,
    console,
    instruction_for,
    interleaved_rounds,
    latency_stats,
    machine_info,
    print_table,
    reference_bundle,
    write_json,
)

NAME = "gpu"
SAMPLES = 8


def available_variants() -> dict[str, dict[str, Any]]:
    """The GPU variants this machine can run, as worker specs (without the bundle fields)."""
    import onnxruntime as ort

    providers = set(ort.get_available_providers())
    variants: dict[str, dict[str, Any]] = {}
    try:
        import torch

        if torch.cuda.is_available():
            variants["torch-eager-fp32-cuda"] = {"kind": "torch", "precision": "fp32", "device": "cuda"}
    except ImportError:
        pass
    if not variants and "CUDAExecutionProvider" not in providers:
        return {}
    if "CUDAExecutionProvider" in providers:
        for precision in ("fp32", "int8", "int4"):
            variants[f"ort-{precision}-cuda"] = {
                "kind": "ort", "precision": precision, "providers": ["CUDAExecutionProvider"],
            }
    if "TensorrtExecutionProvider" in providers:
        variants["ort-fp32-tensorrt"] = {
            "kind": "ort", "precision": "fp32", "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
        }
    return variants


def run(cfg: BenchConfig) -> dict[str, Any]:
    variants = available_variants()
    if not variants:
        console.print(f"[bold]{NAME}[/bold]: no GPU on this machine (no CUDA provider in onnxruntime, no torch.cuda)")
        result = {"part": NAME, "skipped": "no GPU on this machine", "machine": machine_info()}
        write_json(cfg.out / f"{NAME}.json", result)
        return result
    bundle = reference_bundle(cfg.bundle, cfg.work)
    instruction = instruction_for(bundle)
    rounds, per_round = (4, 5) if cfg.quick else (20, 20)
    console.print(f"[bold]{NAME}[/bold]: {', '.join(variants)}; {rounds} interleaved rounds")
    workers: list[Worker] = []
    try:
        for name, spec in variants.items():
            full = {**spec, "bundle": str(bundle), "samples": SAMPLES, "instruction": instruction,
                    "threads": THREADS, "seed": 0}
            workers.append(Worker.start(name, full))
        timings = interleaved_rounds(workers, rounds, per_round)
    finally:
        for worker in workers:
            worker.close()
    baseline = "torch-eager-fp32-cuda" if "torch-eager-fp32-cuda" in timings else None
    rows = {name: latency_stats(ms) for name, ms in timings.items()}
    for name, stats in rows.items():
        if baseline:
            stats["speedup_vs_torch_cuda"] = round(rows[baseline]["median_ms"] / stats["median_ms"], 2)
    result = {
        "part": NAME,
        "quick": cfg.quick,
        "bundle": str(bundle),
        "what": f"one chunk (K={SAMPLES}) on the GPU, result copied back to the host",
        "machine": machine_info(),
        "variants": rows,
    }
    print_table(
        "reference policy per chunk on the GPU",
        ["variant", "median ms", "p99 ms", "speed-up vs torch eager CUDA"],
        [[n, f"{s['median_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s.get('speedup_vs_torch_cuda', '-')}"]
         for n, s in rows.items()],
    )
    write_json(cfg.out / f"{NAME}.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    return part_main("bench.gpu", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
