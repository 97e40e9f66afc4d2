"""Part: real VLA architectures (RANDOM WEIGHTS) imported from LeRobot: per chunk, LeRobot's PyTorch eager
``predict_action_chunk`` vs vla-edge's runner on the imported bundle's fp32 / int8 / int4 variants.

For each policy (ACT 52 M, Diffusion Policy 263 M, SmolVLA 450 M, π0 3.5 B at their real sizes; ``--quick``: the
small test sizes): build the random-weight checkpoint from its LeRobot config (``models.lerobot.fixtures``), import
it with ``vla-edge import lerobot`` (export, int8 chosen by measurement, int4, parity gate against LeRobot), then
time one chunk (K = 1: what LeRobot's eager policy computes per call) in each variant, each in its own process,
with the same intra-op threads and the same observation. Where the variants fit in memory together the rounds are
interleaved (A B C D, B C D A, …) and the speed-up is the median of per-round paired ratios with a 95 %
distribution-free interval; π0's fp32 pair (LeRobot's torch model and the ORT fp32 graphs, ~13 GB each) does not
fit in this machine's memory at once, so for π0 LeRobot, ORT fp32 and the two quantized variants run one group
after another, and its speed-ups are ratios of medians (said so in the table).

Memory is each process's peak resident set (VmHWM). For π0's int4 bundle the resident memory after the chunks is
compared with its weight bytes (target ≤ 1.3×) and with an 8 GB board. Parity figures come from the import.

    python -m bench.real_vlas [--quick] [--policies act,diffusion,smolvla,pi0] [--precisions fp32,int8,int4]
                              [--out bench/results]

``--precisions fp32,int8`` imports (and so times) only those variants: the int4 pass is skipped when time is short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    BenchConfig,
    BenchError,
    Worker,
    console,
    interval_verdict,
    latency_stats,
    machine_info,
    median_interval,
    part_parser,
    print_table,
    write_json,
)
from vla_edge.paths import REPO_ROOT

NAME = "real_vlas"
POLICIES = ("act", "diffusion", "smolvla", "pi0")
VARIANTS = ("lerobot-eager-fp32", "ort-fp32", "ort-int8", "ort-int4")
PRECISIONS = ("fp32", "int8", "int4")
PARITY_TARGETS = {"fp32": 0.999, "int8": 0.99}  # cosine against LeRobot (issue 17)
SPEEDUP_TARGET = 2.0  # ORT int8 vs LeRobot eager, per chunk, for SmolVLA and π0
SPEEDUP_JUDGED = ("smolvla", "pi0")
RESIDENT_FACTOR = 1.3  # π0 int4: resident ≤ 1.3 × weight bytes
BOARD_BYTES = 8 * 2**30
# π0 at full size: LeRobot fp32 and ORT fp32 cannot be resident together on a 24 GB machine
SEQUENTIAL = {"pi0": [["lerobot-eager-fp32"], ["ort-fp32"], ["ort-int8", "ort-int4"]]}
LEROBOT_PYTHON = REPO_ROOT / ".venv-lerobot" / "bin" / "python"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _lerobot(*args: str, timeout: float) -> str:
    if not LEROBOT_PYTHON.exists():
        raise BenchError(f"bench part {NAME!r} needs the LeRobot environment: run scripts/setup-lerobot.sh")
    done = subprocess.run([str(LEROBOT_PYTHON), *args], capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=REPO_ROOT)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def prepare(policy: str, size: str, work: Path, threads: int,
            precisions: tuple[str, ...] = PRECISIONS) -> dict[str, Any]:
    """The random-weight checkpoint, its observation and its imported bundle (each made once, then reused)."""
    root = work / f"{policy}-{size}"
    checkpoint = root / "train" / "checkpoints" / "002000" / "pretrained_model"
    if not (checkpoint / "config.json").is_file():
        console.print(f"building the {size} {policy} checkpoint (RANDOM WEIGHTS) in {root / 'train'} ...")
        started = time.monotonic()
        _lerobot("-m", "models.lerobot.fixtures", "--type", policy, "--size", size, "--out", str(root / "train"),
                 timeout=7200)
        console.print(f"  built in {time.monotonic() - started:.0f} s")
    observation = root / "observation.npz"
    if not observation.is_file():
        _lerobot("-m", "models.lerobot.fixtures", "--type", policy, "--size", size, "--observation", str(observation),
                 timeout=600)
    bundle = root / "bundle"
    log = root / "import.log"
    if not (bundle / "manifest.json").is_file():
        console.print(f"importing {checkpoint} → {bundle} (export, int8 by measurement, int4, parity) ...")
        started = time.monotonic()
        extra = ["--layers-per-block", "1"] if policy == "pi0" and size == "small" else []
        done = subprocess.run(
            [sys.executable, "-m", "vla_edge.cli", "import", "lerobot", str(checkpoint), "--out", str(bundle),
             "--unsigned", "--force", "--fps", "30", "--observations", "6", "--threads", str(threads),
             "--precisions", ",".join(precisions), *extra],
            capture_output=True, text=True, timeout=6 * 3600, env=_env(), cwd=REPO_ROOT)
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise BenchError(f"import of {policy} failed (log: {log}):\n{done.stderr[-2000:]}")
        (root / "import_seconds.txt").write_text(f"{time.monotonic() - started:.0f}\n")
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {"root": root, "checkpoint": checkpoint, "observation": observation, "bundle": bundle,
            "manifest": manifest, "import_log": log}


def _spec(variant: str, prepared: dict[str, Any], threads: int) -> dict[str, Any]:
    base = {"bundle": str(prepared["bundle"]), "observation": str(prepared["observation"]), "threads": threads,
            "seed": 0}
    if variant == "lerobot-eager-fp32":
        return {**base, "kind": "lerobot", "checkpoint": str(prepared["checkpoint"]), "python": str(LEROBOT_PYTHON)}
    return {**base, "kind": "bundle", "precision": variant.removeprefix("ort-"), "samples": 1}


def variants_of(manifest: dict[str, Any]) -> list[str]:
    """LeRobot eager and the ORT variants this bundle has (an import with ``--precisions fp32,int8`` has no int4)."""
    return [v for v in VARIANTS if v == VARIANTS[0] or v.removeprefix("ort-") in manifest["variants"]]


def measure(policy: str, prepared: dict[str, Any], rounds: int, threads: int) -> dict[str, Any]:
    present = variants_of(prepared["manifest"])
    groups = SEQUENTIAL.get(policy) if prepared["size"] == "real" else None
    groups = [[v for v in group if v in present] for group in groups] if groups else [present]
    groups = [group for group in groups if group]
    per_round: dict[str, list[float]] = {}
    memory: dict[str, dict[str, float]] = {}
    for group in groups:
        workers: list[Worker] = []
        try:
            for variant in group:
                workers.append(Worker.start(variant, _spec(variant, prepared, threads), timeout_s=3600.0))
            for r in range(rounds):
                shift = r % len(workers)
                for worker in workers[shift:] + workers[:shift]:  # rotate the order: none always goes first
                    per_round.setdefault(worker.name, []).extend(worker.request(op="run", n=1)["ms"])
            for worker in workers:
                memory[worker.name] = {**worker.request(op="memory"),
                                       "rss_before_load_mb": (worker.ready or {}).get("rss_before_load_mb")}
        finally:
            for worker in workers:
                worker.close()
    return {"timings": per_round, "memory": memory, "interleaved": len(groups) == 1,
            "groups": groups}


def judge(policy: str, measured: dict[str, Any]) -> dict[str, Any]:
    """Speed-ups of each ORT variant against LeRobot eager; interval on paired rounds where interleaved."""
    timings = measured["timings"]
    base = timings["lerobot-eager-fp32"]
    out: dict[str, Any] = {}
    for variant in [v for v in VARIANTS[1:] if v in timings]:
        if measured["interleaved"]:
            interval = median_interval([b / v for b, v in zip(base, timings[variant], strict=True)])
        else:  # separate groups: no pairing; a ratio of medians, and no interval
            ratio = float(np.median(base) / np.median(timings[variant]))
            interval = {"n": len(base), "median": round(ratio, 4), "low": None, "high": None, "confidence": None}
        out[variant] = interval
    return out


def run(cfg: BenchConfig, policies: tuple[str, ...] = POLICIES, rounds: int | None = None,
        precisions: tuple[str, ...] = PRECISIONS) -> dict[str, Any]:
    size = "small" if cfg.quick else "real"
    rounds = rounds or (6 if cfg.quick else 8)
    work = cfg.work / NAME
    rows: dict[str, Any] = {}
    targets: dict[str, bool] = {}
    verdicts: dict[str, str] = {}
    for policy in policies:
        console.print(f"[bold]{NAME}[/bold]: {policy} ({size}, RANDOM WEIGHTS), {cfg.threads} threads, {rounds} rounds")
        prepared = prepare(policy, size, work, cfg.threads, precisions)
        prepared["size"] = size
        measured = measure(policy, prepared, rounds, cfg.threads)
        speedups = judge(policy, measured)
        manifest = prepared["manifest"]
        variants = manifest["variants"]
        row: dict[str, Any] = {
            "size": size,
            "parameters": manifest["policy"]["parameters"],
            "random_weights": manifest["policy"]["random_weights"],
            "graphs": list(manifest["graphs"]),
            "latency": {v: latency_stats(t) for v, t in measured["timings"].items()},
            "speedup_vs_lerobot": speedups,
            "interleaved": measured["interleaved"],
            "groups": measured["groups"],
            "memory": measured["memory"],
            "bundle_bytes": {p: variants[p]["size_bytes"] for p in variants},
            "parity": {p: variants[p]["parity"] for p in variants},
            "quantization": {p: variants[p]["quantization"] for p in variants},
            "import_seconds": _read_int(prepared["root"] / "import_seconds.txt"),
        }
        if policy in SPEEDUP_JUDGED:
            interval = speedups["ort-int8"]
            if measured["interleaved"]:
                verdict = interval_verdict(interval, SPEEDUP_TARGET)
            else:
                verdict = "MET" if interval["median"] >= SPEEDUP_TARGET else "MISSED"
            row["speedup_verdict"] = verdict
            name = f"{policy}: ORT int8 >= {SPEEDUP_TARGET}x faster than LeRobot eager per chunk"
            targets[name] = verdict == "MET"
            verdicts[name] = f"{verdict} ({_interval_text(interval)})"
        for precision, bound in PARITY_TARGETS.items():
            parity = variants.get(precision, {}).get("parity") or {}
            if "cosine" in parity:
                name = f"{policy}: {precision} parity cosine vs LeRobot >= {bound}"
                targets[name] = parity["cosine"] >= bound
                verdicts[name] = f"{'MET' if targets[name] else 'MISSED'} ({parity['cosine']:.6f})"
        if policy == "pi0":
            weights = variants["int4"]["size_bytes"]
            resident = measured["memory"]["ort-int4"]["rss_mb"] * 2**20
            peak = measured["memory"]["ort-int4"]["peak_rss_mb"] * 2**20
            row["int4_resident"] = {"weight_bytes": weights, "resident_bytes": int(resident), "peak_bytes": int(peak),
                                    "ratio": round(resident / weights, 3), "board_bytes": BOARD_BYTES}
            name = f"pi0 int4: resident <= {RESIDENT_FACTOR}x weight bytes"
            targets[name] = resident <= RESIDENT_FACTOR * weights
            verdicts[name] = f"{'MET' if targets[name] else 'MISSED'} ({resident / weights:.2f}x)"
            name = "pi0 int4: peak resident < 8 GB"
            targets[name] = peak < BOARD_BYTES
            verdicts[name] = f"{'MET' if targets[name] else 'MISSED'} ({peak / 2**30:.2f} GiB)"
        rows[policy] = row
        result = {"part": NAME, "quick": cfg.quick, "machine": machine_info(), "threads": cfg.threads,
                  "label": "RANDOM WEIGHTS: real architectures with untrained weights; speed and memory are real, "
                           "the actions mean nothing",
                  "policies": rows, "targets_met": targets, "verdicts": verdicts,
                  "load_average": os.getloadavg()}
        _report(result, cfg.out)  # after every policy: a real-size run takes hours, and a cut run keeps its rows
    return result


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _interval_text(interval: dict[str, Any]) -> str:
    if interval.get("low") is None:
        return f"{interval['median']:.2f}x (sequential)"
    return f"{interval['median']:.2f}x [{interval['low']:.2f}, {interval['high']:.2f}]"


def _report(result: dict[str, Any], out: Path) -> None:
    rows = []
    for policy, r in result["policies"].items():
        for variant in [v for v in VARIANTS if v in r["latency"]]:
            lat = r["latency"][variant]
            precision = "fp32" if variant.startswith("lerobot") else variant.removeprefix("ort-")
            parity = r["parity"].get(precision) or {}
            rows.append([
                policy if variant == VARIANTS[0] else "",
                f"{r['parameters'] / 1e6:.1f} M" if variant == VARIANTS[0] else "",
                variant, f"{lat['median_ms']:.1f}", f"{lat['p99_ms']:.1f}",
                "—" if variant == VARIANTS[0] else _interval_text(r["speedup_vs_lerobot"][variant]),
                f"{r['memory'][variant]['peak_rss_mb']:.0f}",
                "—" if variant == VARIANTS[0] else f"{r['bundle_bytes'][precision] / 2**20:.1f}",
                "—" if variant == VARIANTS[0] else
                f"{parity.get('action_mae', 0):.1e} / {parity.get('cosine', 0):.5f} / {parity.get('reference_spread', 0):.3f}",
            ])
    caption = [f"{k}: {v}" for k, v in result["verdicts"].items()]
    caption.append(f"load average at the end (1/5/15 min): {' / '.join(f'{x:.1f}' for x in result['load_average'])}")
    for policy, r in result["policies"].items():
        if "int4_resident" in r:
            m = r["int4_resident"]
            caption.append(f"pi0 int4: resident {m['resident_bytes'] / 2**30:.2f} GiB after chunks, peak "
                           f"{m['peak_bytes'] / 2**30:.2f} GiB, weights {m['weight_bytes'] / 2**30:.2f} GiB "
                           f"({m['ratio']:.2f}x), board 8 GiB")
        if not r["interleaved"]:
            caption.append(f"{policy}: variants measured one group after another ({r['groups']}): they do not fit in "
                           "memory together; speed-ups are ratios of medians")
    print_table(
        f"{NAME} ({'small' if result['quick'] else 'real'} sizes, RANDOM WEIGHTS): one chunk, K = 1, "
        f"{result['threads']} threads; speed-up vs LeRobot eager: median of paired rounds [95 % interval]",
        ["policy", "params", "variant", "p50 ms", "p99 ms", "speed-up", "peak RSS MiB", "bundle MiB",
         "parity MAE / cosine / spread"],
        rows, "\n".join(caption))
    write_json(out / f"{NAME}{'-quick' if result['quick'] else ''}.json", result)


def main(argv: list[str] | None = None) -> int:
    parser = part_parser("bench.real_vlas", __doc__)
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, from {', '.join(POLICIES)}")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 8; 6 with --quick)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="ORT variants to import and time, comma-separated from fp32,int8,int4 (fp32 always)")
    args = parser.parse_args(argv)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    if "fp32" not in precisions or not set(precisions) <= set(PRECISIONS):
        parser.error(f"--precisions: fp32 and any of int8, int4 (got {args.precisions!r})")
    policies = tuple(p for p in args.policies.split(",") if p)
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        parser.error(f"unknown policy: {', '.join(bad)}")
    run(BenchConfig(out=args.out, work=args.work, quick=args.quick, bundle=args.bundle, threads=args.threads), policies,
        args.rounds, precisions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
