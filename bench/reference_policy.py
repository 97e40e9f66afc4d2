"""Part 1: the reference policy per chunk, PyTorch eager fp32 vs ONNX Runtime fp32 / int8 / int4 (same weights).

A chunk = observation encoder once + K samples through every Euler step of the denoiser, instruction cached
(what the daemon does per chunk). Each variant lives in its own process (bench.worker) so its peak resident
memory is its own; the rounds are interleaved (A B C D, B C D A, ...) with the same thread count, so machine
noise hits every variant alike. Memory is the whole process's peak RSS (interpreter + runtime + weights +
arenas), which is what a board pays; ``rss_before_load_mb`` is the bare interpreter for context.

    python -m bench.reference_policy [--quick] [--out bench/results]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import (
    part_main,
    BenchConfig,
    Worker,
    console,
    instruction_for,
    interleaved_rounds,
    latency_bars,
    latency_stats,
    machine_info,
    met,
    print_table,
    pyplot,
    reference_bundle,
    require_torch,
    save_observation,
    write_json,
)

NAME = "reference_policy"
SPEEDUP_TARGET = 4.0
MEMORY_TARGET = 3.0
SAMPLES = 8
VARIANTS = ("torch-eager-fp32", "ort-fp32", "ort-int8", "ort-int4")
QUANTIZED = ("ort-int8", "ort-int4")
CAMERA_LIBRARY = "cv2"  # the daemon's camera imports OpenCV whatever runs the policy: measured as an add-on


def _spec(variant: str, bundle: Path, instruction: str, observation: Path, threads: int) -> dict[str, Any]:
    base = {"bundle": str(bundle), "samples": SAMPLES, "instruction": instruction, "threads": threads, "seed": 0,
            "observation": str(observation)}
    if variant == "torch-eager-fp32":
        return {**base, "kind": "torch", "precision": "fp32"}
    return {**base, "kind": "ort", "precision": variant.removeprefix("ort-")}


def _graph_bytes(bundle: Path, variant: str) -> int:
    precision = "fp32" if variant.startswith("torch") else variant.removeprefix("ort-")
    return sum(p.stat().st_size for p in (bundle / precision).glob("*.onnx"))


def run(cfg: BenchConfig) -> dict[str, Any]:
    require_torch(NAME)
    bundle = reference_bundle(cfg.bundle, cfg.work)
    instruction = instruction_for(bundle)
    rounds, per_round = (6, 4) if cfg.quick else (30, 10)
    console.print(f"[bold]{NAME}[/bold]: {bundle}, K={SAMPLES}, {cfg.threads} threads, {rounds} interleaved rounds")

    from bench.torch_reference import TorchChunkRunner, parity_max_abs
    from hil.world import TabletopWorld
    from vla_edge.bundle import load_bundle

    loaded = load_bundle(bundle)
    world = TabletopWorld(0)
    parity = parity_max_abs(loaded, TorchChunkRunner(loaded, cfg.threads), world.render(), world.state(), instruction)
    observation = save_observation(cfg.work / "observation.npz", world)

    workers: list[Worker] = []
    try:
        for variant in VARIANTS:
            workers.append(Worker.start(variant, _spec(variant, bundle, instruction, observation, cfg.threads)))
        timings = interleaved_rounds(workers, rounds, per_round)
        memory = {
            w.name: {**w.request(op="memory"), "rss_before_load_mb": (w.ready or {}).get("rss_before_load_mb")}
            for w in workers
        }
        for w in workers:
            memory[w.name]["peak_rss_with_camera_library_mb"] = w.request(op="import", module=CAMERA_LIBRARY)["peak_rss_mb"]
    finally:
        for worker in workers:
            worker.close()

    variants: dict[str, Any] = {}
    torch_stats = latency_stats(timings["torch-eager-fp32"])
    torch_peak = memory["torch-eager-fp32"]["peak_rss_mb"]
    torch_peak_camera = memory["torch-eager-fp32"]["peak_rss_with_camera_library_mb"]
    for variant in VARIANTS:
        stats = latency_stats(timings[variant])
        variants[variant] = {
            **stats,
            **memory[variant],
            "graph_bytes": _graph_bytes(bundle, variant),
            "speedup_vs_torch": round(torch_stats["median_ms"] / stats["median_ms"], 2),
            "p99_speedup_vs_torch": round(torch_stats["p99_ms"] / stats["p99_ms"], 2),
            "memory_ratio_vs_torch": round(torch_peak / memory[variant]["peak_rss_mb"], 2),
            "memory_ratio_vs_torch_with_camera_library": round(
                torch_peak_camera / memory[variant]["peak_rss_with_camera_library_mb"], 2
            ),
        }
    best = max(("ort-int8", "ort-int4"), key=lambda v: variants[v]["speedup_vs_torch"])
    targets = {
        f"quantized >= {SPEEDUP_TARGET}x faster than torch eager (median)": met(
            variants[best]["speedup_vs_torch"], SPEEDUP_TARGET
        ),
        f"quantized >= {MEMORY_TARGET}x smaller peak RSS than torch eager": met(
            max(variants[v]["memory_ratio_vs_torch"] for v in QUANTIZED), MEMORY_TARGET
        ),
        f"quantized >= {MEMORY_TARGET}x smaller peak RSS than torch eager, both with OpenCV loaded (the daemon)": met(
            max(variants[v]["memory_ratio_vs_torch_with_camera_library"] for v in QUANTIZED), MEMORY_TARGET
        ),
    }
    result = {
        "part": NAME,
        "quick": cfg.quick,
        "bundle": str(bundle),
        "what": f"one chunk = observation encoder + K={SAMPLES} samples x denoising steps, instruction cached",
        "memory_counted": "whole-process peak RSS (VmHWM) of a process running only that variant on a saved "
        "observation (no simulator); 'with camera library': the same after the process also imports OpenCV, "
        "as the daemon's camera does; the torch process also holds onnx (~6 MiB), used to read the same weights",
        "same_weights_max_abs_action_diff_torch_vs_ort_fp32": parity,
        "rounds": rounds,
        "chunks_per_round": per_round,
        "machine": {**machine_info(), "threads": cfg.threads},
        "variants": variants,
        "best_quantized": best,
        "targets_met": targets,
    }
    _report(result, cfg.out)
    return result


def _report(result: dict[str, Any], out: Path) -> None:
    rows = []
    for name, v in result["variants"].items():
        rows.append(
            [
                name,
                f"{v['median_ms']:.2f}",
                f"{v['p99_ms']:.2f}",
                f"{v['speedup_vs_torch']:.2f}x",
                f"{v['peak_rss_mb']:.0f}",
                f"{v['memory_ratio_vs_torch']:.2f}x",
                f"{v['peak_rss_with_camera_library_mb']:.0f} ({v['memory_ratio_vs_torch_with_camera_library']:.2f}x)",
                f"{v['graph_bytes'] / 1e6:.2f}",
            ]
        )
    caption = "; ".join(f"{k}: {'MET' if ok else 'MISSED'}" for k, ok in result["targets_met"].items())
    print_table(
        f"reference policy per chunk (K={SAMPLES}, {result['machine']['threads']} threads, interleaved, same weights: "
        f"max |torch-ort| {result['same_weights_max_abs_action_diff_torch_vs_ort_fp32']:.1e})",
        ["variant", "median ms", "p99 ms", "speed-up", "peak RSS MiB", "RSS ratio", "+ OpenCV MiB (ratio)", "graphs MB"],
        rows,
        caption,
    )
    write_json(out / f"{NAME}.json", result)
    plt = pyplot()
    if plt is None:
        return
    names = list(result["variants"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    latency_bars(left, result["variants"], "tab:blue", "ms per chunk", "latency (lower is better)")
    right.bar(names, [result["variants"][n]["peak_rss_mb"] for n in names], color="tab:orange")
    right.set_ylabel("peak RSS, MiB (whole process)")
    right.set_title("memory (lower is better)")
    right.tick_params(axis="x", rotation=20)
    fig.suptitle("reference policy: PyTorch eager vs ONNX Runtime, same weights, one run")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return part_main("bench.reference_policy", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
