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
    THREADS,
    BenchConfig,
    BenchError,
    Worker,
    console,
    instruction_for,
    interleaved_rounds,
    latency_bars,
    latency_stats,
    machine_info,
    print_table,
    pyplot,
    reference_bundle,
    part_main,
    save_observation,
    write_json,
)

NAME = "gpu"
SAMPLES = 8


def available_variants() -> dict[str, dict[str, Any]]:
    """The GPU variants this machine may run, as worker specs (without the bundle fields).

    A provider ONNX Runtime lists can still fail to load (TensorRT needs libnvinfer): such a variant is tried and
    reported as unavailable with ONNX Runtime's own message, not dropped silently.
    """
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
        variants["ort-fp32-tensorrt"] = {"kind": "ort", "precision": "fp32", "providers": ["TensorrtExecutionProvider"]}
    return variants


def _start_workers(variants: dict[str, dict[str, Any]], base: dict[str, Any],
                   unavailable: dict[str, str]) -> list[Worker]:
    """Start each variant; one that fails to start, or whose session fell back to the CPU, is reported instead."""
    workers: list[Worker] = []
    for name, spec in variants.items():
        try:
            worker = Worker.start(name, {**base, **spec})
        except BenchError as exc:
            unavailable[name] = str(exc)[-600:]
            continue
        wanted = spec.get("providers", [None])[0]
        used = (worker.ready or {}).get("providers")
        if wanted is not None and (not used or used[0] != wanted):
            unavailable[name] = f"ONNX Runtime fell back to {used} (asked for {wanted})"
            worker.close()
            continue
        workers.append(worker)
    return workers


def _measure(bundle: Path, variants: dict[str, dict[str, Any]], cfg: BenchConfig, observation: Path,
             label: str) -> dict[str, Any]:
    rounds, per_round = (4, 5) if cfg.quick else (20, 20)
    base = {"bundle": str(bundle), "samples": SAMPLES, "instruction": instruction_for(bundle), "threads": THREADS,
            "seed": 0, "observation": str(observation)}
    unavailable: dict[str, str] = {}
    workers = _start_workers(variants, base, unavailable)
    try:
        timings = interleaved_rounds(workers, rounds, per_round) if workers else {}
    finally:
        for worker in workers:
            worker.close()
    baseline = "torch-eager-fp32-cuda" if "torch-eager-fp32-cuda" in timings else None
    rows = {name: latency_stats(ms) for name, ms in timings.items()}
    for stats in rows.values():
        if baseline:
            stats["speedup_vs_torch_cuda"] = round(rows[baseline]["median_ms"] / stats["median_ms"], 2)
    print_table(
        f"{label} per chunk on the GPU",
        ["variant", "median ms", "p99 ms", "speed-up vs torch eager CUDA"],
        [[n, f"{s['median_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s.get('speedup_vs_torch_cuda', '-')}"]
         for n, s in rows.items()]
        + [[n, "unavailable", "-", why[:80]] for n, why in unavailable.items()],
    )
    return {"bundle": str(bundle), "rounds": rounds, "chunks_per_round": per_round, "variants": rows,
            "unavailable": unavailable}


def run(cfg: BenchConfig) -> dict[str, Any]:
    variants = available_variants()
    if not variants:
        console.print(f"[bold]{NAME}[/bold]: no GPU on this machine (no CUDA provider in onnxruntime, no torch.cuda)")
        result = {"part": NAME, "skipped": "no GPU on this machine", "machine": machine_info()}
        write_json(cfg.out / f"{NAME}.json", result)
        return result
    from vla_edge.paths import REMOTE_BUNDLE_DIR

    bundle = reference_bundle(cfg.bundle, cfg.work)
    observation = save_observation(cfg.work / "gpu-observation.npz")
    console.print(f"[bold]{NAME}[/bold]: {', '.join(variants)}")
    result: dict[str, Any] = {
        "part": NAME,
        "quick": cfg.quick,
        "what": f"one chunk (K={SAMPLES}) on the GPU, result copied back to the host",
        "machine": machine_info(),
        "reference": _measure(bundle, variants, cfg, observation, "reference policy"),
    }
    if cfg.bundle is None and (REMOTE_BUNDLE_DIR / "manifest.json").is_file():
        # The remote tier's bigger fp32 policy is what a GPU server would host (vla-edge remote serve).
        fp32_only = {n: v for n, v in variants.items() if v["precision"] == "fp32"}
        result["remote"] = _measure(REMOTE_BUNDLE_DIR, fp32_only, cfg, observation, "remote-tier policy")
    result["variants"] = result["reference"]["variants"]
    write_json(cfg.out / f"{NAME}.json", result)
    plot(result, cfg.out)
    return result


def plot(result: dict[str, Any], out: Path) -> None:
    """Median and p99 per chunk for each policy measured (``result`` as written to gpu.json)."""
    plt = pyplot()
    if plt is None:
        return
    tables = [(label, result[key]) for key, label in (("reference", "reference policy"), ("remote", "remote-tier policy"))
              if key in result and result[key]["variants"]]
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 4), squeeze=False)
    for axis, (label, table) in zip(axes[0], tables):
        latency_bars(axis, table["variants"], "tab:green", "ms per chunk (K=8), result on the host", label)
    gpu = result.get("machine", {}).get("gpu", "GPU")
    fig.suptitle(f"{gpu}: ONNX Runtime CUDA vs PyTorch eager CUDA, same weights, one run")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return part_main("bench.gpu", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
