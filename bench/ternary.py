"""Part 5: ternary (1.58-bit, BitNet b1.58 style) weights for the reference policy: size, accuracy, latency.

The ternary bundle (models/ternary/build.py, post-training absmean, no fine-tuning) holds the same ternary
weights on two ONNX Runtime paths: 2-bit MatMulNBits and int8 kernels. When a quantization-aware fine-tuned
(QAT) ternary bundle exists (``python -m models.ternary.qat``, default models/work/ternary-qat), its two paths
are measured too, as the rows marked ``qat``. Against the ORIGINAL reference fp32 policy:
* action error: the same held-out observations (hil world layouts) and the same initial noise, mean |error|;
* closed loop: per-step success on the same hil chains (``models.reference.parity.closed_loop``);
* latency per chunk: own process per variant, interleaved, same threads; the regular int8/int4 variants beside.
Where ternary is slower or less accurate than int8, the table says so: nothing here is tuned to win.

    python -m bench.ternary [--quick] [--out bench/results] [--qat models/work/ternary-qat]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    THREADS,
    BenchConfig,
    BenchError,
    Worker,
    bench_config,
    console,
    instruction_for,
    interleaved_rounds,
    latency_stats,
    machine_info,
    part_parser,
    print_table,
    pyplot,
    reference_bundle,
    write_json,
)
from vla_edge.paths import MODELS_DIR

NAME = "ternary"
SAMPLES = 8
SLOWER = 1.05  # "slower than int8" means more than 5 % slower (less is within the noise of one run)
# name → (bundle: "reference" | "ternary", precision directory in it)
VARIANTS = {
    "fp32": ("reference", "fp32"),
    "int8": ("reference", "int8"),
    "int4": ("reference", "int4"),
    "ternary-2bit-matmulnbits": ("ternary", "int4"),
    "ternary-int8-kernels": ("ternary", "int8"),
}
# The same two paths holding the ternary weights of quantization-aware fine-tuning (models/ternary/qat.py).
QAT_VARIANTS = {
    "ternary-qat-2bit-matmulnbits": ("ternary-qat", "int4"),
    "ternary-qat-int8-kernels": ("ternary-qat", "int8"),
}
QAT_DIR = MODELS_DIR / "work" / "ternary-qat"  # models.ternary.qat's default --out
COLOURS = {"reference": "tab:blue", "ternary": "tab:red", "ternary-qat": "tab:green"}


def qat_bundle(path: Path | None) -> Path | None:
    """The QAT ternary bundle: ``path`` itself or its ``bundle/`` (models.ternary.qat's --out); None if absent."""
    if path is None:
        return None
    for candidate in (path, path / "bundle"):
        if (candidate / "manifest.json").is_file():
            return candidate
    return None


def _qat_training(bundle: Path) -> dict[str, Any] | None:
    """The run record models.ternary.qat writes next to its bundle (iterations, time, held-out losses)."""
    record = bundle.parent / "qat.json"
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    keys = ("iterations", "train_seconds", "held_out_loss_fp32", "held_out_loss_post_training_ternary",
            "held_out_loss_qat_ternary", "demo_chains", "demo_frames")
    return {key: data.get(key) for key in keys} | {"lr": data.get("config", {}).get("lr")}


def _held_out(count: int, seed: int) -> Any:
    from hil.world import BINS, COLOURS, TabletopWorld
    from models.reference.parity import HeldOut

    rng = np.random.default_rng(seed)
    images, states, texts = [], [], []
    for i in range(count):
        world = TabletopWorld(seed + i)
        images.append(world.render())
        states.append(world.state().astype(np.float32))
        texts.append(f"put the {rng.choice(COLOURS)} block in the {rng.choice(BINS)} bin")
    return HeldOut(images=np.stack(images), states=np.stack(states), instructions=texts)


def run(cfg: BenchConfig, qat: Path | None = QAT_DIR) -> dict[str, Any]:
    import onnxruntime as ort

    from models.reference import parity
    from models.ternary.build import TWO_BIT_MIN_ONNXRUNTIME, build, runs_2bit
    from vla_edge.bundle import load_bundle

    if not runs_2bit(ort.__version__):
        need = ".".join(map(str, TWO_BIT_MIN_ONNXRUNTIME))
        raise BenchError(f"the ternary part needs onnxruntime >= {need} (2-bit MatMulNBits); this one is "
                         f"{ort.__version__} (PyPI has nothing newer than 1.23.2 for Python 3.10)")
    reference = reference_bundle(cfg.bundle, cfg.work)
    ternary = build(reference, cfg.work / "ternary-bundle")
    logging.getLogger().setLevel(logging.WARNING)  # importing onnxruntime's quantizer turned the root logger up
    dirs = {"reference": reference, "ternary": ternary}
    variants = dict(VARIANTS)
    qat_dir = qat_bundle(qat)
    if qat_dir is not None:
        dirs["ternary-qat"] = qat_dir
        variants.update(QAT_VARIANTS)
    else:
        console.print(f"no QAT ternary bundle at {qat}: QAT rows skipped (python -m models.ternary.qat makes one)")
    observations, chains, steps = (8, 1, 2) if cfg.quick else (64, 10, 10)
    rounds, per_round = (4, 4) if cfg.quick else (20, 10)
    console.print(
        f"[bold]{NAME}[/bold]: {reference} → {ternary}" + (f", QAT {qat_dir}" if qat_dir else "")
        + f"; {observations} observations, {chains} chains"
    )

    held = _held_out(observations, seed=500)
    bundles = {key: load_bundle(path) for key, path in dirs.items()}
    chunks, loops = {}, {}
    for name, (which, precision) in variants.items():
        chunks[name] = parity.sample_on(parity.runner_for(bundles[which], precision, 0, THREADS), held, 4, 0)
        loops[name] = parity.closed_loop(parity.runner_for(bundles[which], precision, 0, THREADS), chains, 1000, steps)

    instruction = instruction_for(reference)
    workers: list[Worker] = []
    try:
        for name, (which, precision) in variants.items():
            spec = {"kind": "ort", "bundle": str(dirs[which]), "precision": precision, "samples": SAMPLES,
                    "instruction": instruction, "threads": THREADS, "seed": 0}
            workers.append(Worker.start(name, spec))
        timings = interleaved_rounds(workers, rounds, per_round)
    finally:
        for worker in workers:
            worker.close()

    rows: dict[str, Any] = {}
    int8_median = latency_stats(timings["int8"])["median_ms"]
    for name, (which, precision) in variants.items():
        # chunks["fp32"] is the ORIGINAL reference fp32, also for the QAT rows (whose own fp32 is latent weights)
        mae, worst = parity.action_error(chunks["fp32"], chunks[name])
        stats = latency_stats(timings[name])
        rows[name] = {
            "bundle": which,
            "qat": which == "ternary-qat",
            "graph_bytes": sum(p.stat().st_size for p in (dirs[which] / precision).glob("*.onnx")),
            "action_mae_vs_fp32": round(mae, 5),
            "action_max_abs_vs_fp32": round(worst, 4),
            "per_step_success": round(loops[name].per_step_success, 4),
            "closed_loop_steps": loops[name].steps,
            **stats,
            "latency_vs_int8": round(stats["median_ms"] / int8_median, 3),
        }
    slower = [n for n in rows if rows[n]["bundle"] != "reference" and rows[n]["latency_vs_int8"] > SLOWER]
    result = {
        "part": NAME,
        "quick": cfg.quick,
        "bundle": str(reference),
        "ternary_bundle": str(ternary),
        "method": "post-training absmean ternarisation per output column (BitNet b1.58 style), no fine-tuning",
        "qat_bundle": str(qat_dir) if qat_dir else None,
        "qat_method": "the same ternarisation after quantization-aware fine-tuning of the reference checkpoint "
        "(straight-through estimator, models/ternary/qat.py); rows with qat: true" if qat_dir else
        f"not measured: no QAT bundle at {qat} (python -m models.ternary.qat --out models/work/ternary-qat)",
        "qat_training": _qat_training(qat_dir) if qat_dir else None,
        "note_quick": "quick mode uses few observations and chains: accuracy figures are smoke values" if cfg.quick else "",
        "machine": machine_info(),
        "variants": rows,
        "ternary_slower_than_int8": slower,
    }
    _report(result, cfg.out)
    return result


def _report(result: dict[str, Any], out: Path) -> None:
    rows = [
        [
            name + (" (QAT)" if v.get("qat") else ""),
            f"{v['graph_bytes'] / 1e3:.0f}",
            f"{v['action_mae_vs_fp32']:.4f}",
            f"{v['per_step_success']:.1%} ({v['closed_loop_steps']})",
            f"{v['median_ms']:.2f}",
            f"{v['p99_ms']:.2f}",
            f"{v['latency_vs_int8']:.2f}x",
        ]
        for name, v in result["variants"].items()
    ]
    caption = ("more than 5 % slower than int8: " + ", ".join(result["ternary_slower_than_int8"])) if result["ternary_slower_than_int8"] else ""
    print_table(
        "ternary (1.58-bit, post-training and QAT) vs the reference variants",
        ["variant", "graphs kB", "action MAE vs fp32", "per-step success (steps)", "median ms", "p99 ms",
         "latency / int8"],
        rows,
        caption,
    )
    write_json(out / f"{NAME}.json", result)
    plt = pyplot()
    if plt is None:
        return
    names = list(result["variants"])
    values = [result["variants"][n] for n in names]
    labels = [_short(n) for n in names]
    colours = ["tab:gray" if n == "fp32" else COLOURS[v["bundle"]] for n, v in zip(names, values, strict=True)]
    panels = (
        ("graph_bytes", "graph bytes"),
        ("action_mae_vs_fp32", "action MAE vs fp32"),
        ("per_step_success", "closed-loop per-step success"),
        ("median_ms", "median ms/chunk"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(17, 4.5))
    for axis, (key, label) in zip(axes, panels, strict=True):
        axis.bar(labels, [v[key] for v in values], color=colours)
        axis.set_title(label)
        axis.tick_params(axis="x", rotation=45)
        for tick in axis.get_xticklabels():
            tick.set_horizontalalignment("right")
    fig.suptitle("ternary weights, post-training (red) and QAT (green), vs fp32 / int8 / int4, reference policy")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=100)
    plt.close(fig)


def _short(name: str) -> str:
    """Axis label: which weights (PTQ / QAT ternary) and which kernels, without the long variant names."""
    for prefix, short in (("ternary-qat-", "QAT "), ("ternary-", "PTQ ")):
        if name.startswith(prefix):
            return short + name.removeprefix(prefix).replace("2bit-matmulnbits", "2-bit").replace("-kernels", " kern.")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = part_parser("bench.ternary", __doc__)
    parser.add_argument("--qat", type=Path, default=QAT_DIR, help="QAT ternary bundle, or models.ternary.qat's --out")
    args = parser.parse_args(argv)
    run(bench_config(args), qat=args.qat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
