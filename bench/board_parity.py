"""Same numbers on another machine: the reference bundle's fp32, int8 and int4 variants on recorded observations
with fixed noise, run here and on a board (or an emulated board), and the actions compared within stated bounds.

Shapes alone cannot see a wrong kernel: under qemu's ``max`` CPU, ONNX Runtime 1.24+ gives int8 actions up to
1.0 away from x86's (on a 0..1 action range) while every output still has the right shape. So the check runs the
policy itself (``vla_edge.policy.PolicyRunner``, the code the daemon runs) on the same inputs on both machines:

    python -m bench.board_parity record OBS.npz          # once, on a dev machine (needs the hil simulator)
    python -m bench.board_parity run OBS.npz OUT.json    # on each machine: actions of every variant
    python -m bench.board_parity compare X86.json BOARD.json   # exit 1 when a variant is out of bounds

On a Jetson, ``run ... --providers TensorrtExecutionProvider CPUExecutionProvider`` gives TensorRT's actions (fp16
unless ``--trt-fp32``) to compare with the x86 CPU run (``compare --bound`` for a looser bound than the CPU's).

Only numpy and onnxruntime at run time (``run`` and ``compare`` work in the bare arm64 root of
deploy/raspberry-pi/check-aarch64.sh). No pickle: the observation file is a plain npz, results are JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla_edge.errors import VlaEdgeError
from vla_edge.providers import ProviderOptions

PRECISIONS = ("fp32", "int8", "int4")
NUM_SAMPLES = 8  # K chunks per observation, as the daemon samples by default (policy.num_samples)
NOISE_SEED = 20260
# The recorded observations: layouts of the hil world and an instruction for each.
RECORDED = (
    (0, "put the red block in the left bin"),
    (1, "put the blue block in the right bin"),
    (2, "put the green block in the top bin"),
    (3, "put the yellow block in the bottom bin"),
)
# Largest allowed |x86 - board| of any action value, in action units (every reference action is in 0..1).
# Both machines run the same graph on the same input and noise; only the CPU's kernels differ, i.e. the order of
# float additions (fp32) and how the integer products are vectorised (int8, int4). Measured between x86-64 and an
# emulated Cortex-A76 (the Pi 5's core): at most ~1e-6 for every variant (docs/deployment.md has the table).
# The bounds leave two to three orders of magnitude for other float summation orders while staying far below
# what a wrong kernel does (0.15 to 1.0), and below a tenth of the parity gate's quantization error bound
# (models/reference/parity.py, 0.03 mean).
BOUNDS = {"fp32": 1e-4, "int8": 1e-3, "int4": 1e-3}


class ParityError(VlaEdgeError):
    """An observation or result file that does not fit (wrong keys, shapes, variants)."""


@dataclass(frozen=True)
class Observations:
    images: np.ndarray  # (M, H, W, 3) uint8
    states: np.ndarray  # (M, S) float32
    instructions: list[str]
    noise: np.ndarray  # (M, K, horizon, action_dim) float32: the initial noise of every sample


@dataclass(frozen=True)
class VariantDiff:
    precision: str
    max_abs: float
    mean_abs: float
    over_bound: int  # action values further apart than the bound
    values: int
    bound: float

    @property
    def passed(self) -> bool:
        return self.over_bound == 0


# ---- logic (no IO) -------------------------------------------------------------------------------------------
def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            bounds: dict[str, float] | None = None) -> list[VariantDiff]:
    """One VariantDiff per variant in ``reference``; a variant missing from ``candidate`` or of another shape is
    an error (a check that compared nothing must not pass)."""
    bounds = BOUNDS if bounds is None else bounds
    diffs = []
    for precision, ref in reference.items():
        if precision not in candidate:
            raise ParityError(f"the board's results have no {precision!r} variant (they have {', '.join(candidate)})")
        got = np.asarray(candidate[precision], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            raise ParityError(f"{precision}: board actions have shape {got.shape}, x86 {ref.shape}")
        if ref.size == 0:
            raise ParityError(f"{precision}: no actions to compare")
        diff = np.abs(got - ref)
        diff[~np.isfinite(diff)] = np.inf  # a NaN on either side is a mismatch, never a pass
        bound = bounds[precision]
        diffs.append(VariantDiff(precision, float(diff.max()), float(diff.mean()), int((diff > bound).sum()),
                                 int(diff.size), bound))
    return diffs


def report_lines(diffs: list[VariantDiff], reference_meta: dict[str, Any], candidate_meta: dict[str, Any]) -> list[str]:
    lines = [f"x86:   {describe(reference_meta)}", f"board: {describe(candidate_meta)}"]
    for d in diffs:
        verdict = "ok" if d.passed else "MISMATCH"
        lines.append(f"{d.precision:5s} max |diff| {d.max_abs:.3g}  mean {d.mean_abs:.3g}  over {d.bound:g}: "
                     f"{d.over_bound}/{d.values}  {verdict}")
    return lines


def describe(meta: dict[str, Any]) -> str:
    providers = [p for p in meta.get("providers") or [] if p != "CPUExecutionProvider"]
    return (f"{meta.get('machine', '?')} python {meta.get('python', '?')} onnxruntime {meta.get('onnxruntime', '?')} "
            f"numpy {meta.get('numpy', '?')}{' cpu ' + meta['cpu'] if meta.get('cpu') else ''}"
            f"{' on ' + ' > '.join(providers) if providers else ''}")


# ---- IO ------------------------------------------------------------------------------------------------------
def load_observations(path: Path) -> Observations:
    try:
        with np.load(path, allow_pickle=False) as data:
            obs = Observations(
                images=data["images"], states=data["states"].astype(np.float32),
                instructions=[str(s) for s in data["instructions"]], noise=data["noise"].astype(np.float32),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ParityError(f"cannot read observations {path}: {exc}") from None
    m = obs.images.shape[0]
    if not (obs.states.shape[0] == len(obs.instructions) == obs.noise.shape[0] == m) or obs.noise.ndim != 4:
        raise ParityError(f"{path}: images, states, instructions and noise disagree on the number of observations")
    return obs


def record(path: Path) -> Path:
    """The committed observation file: rendered hil-world frames, states, instructions, and fixed noise."""
    from hil.world import TabletopWorld
    from vla_edge.bundle import load_bundle
    from vla_edge.paths import REFERENCE_BUNDLE_DIR

    manifest = load_bundle(REFERENCE_BUNDLE_DIR, verify=False).manifest
    worlds = [TabletopWorld(seed) for seed, _ in RECORDED]
    rng = np.random.default_rng(NOISE_SEED)
    noise = rng.standard_normal((len(RECORDED), NUM_SAMPLES, manifest.horizon, manifest.action_dim)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, images=np.stack([w.render() for w in worlds]), states=np.stack([w.state() for w in worlds]).astype(np.float32),
        instructions=np.array([text for _, text in RECORDED]), noise=noise,
    )
    return path


def machine_meta(cpu: str | None = None, providers: list[str] | None = None) -> dict[str, Any]:
    import onnxruntime as ort

    return {"machine": platform.machine(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "numpy": np.__version__, "cpu": cpu, "providers": providers or ["CPUExecutionProvider"]}


def run(observations: Path, bundle_dir: Path | None = None, precisions: tuple[str, ...] = PRECISIONS,
        providers: list[str] | None = None, provider_options: ProviderOptions | None = None) -> dict[str, np.ndarray]:
    """Actions (M, K, horizon, action_dim) of every variant: the daemon's PolicyRunner, 1 thread, on the CPU
    provider unless ``providers`` says otherwise (a Jetson: TensorRT with ``provider_options``' cache and fp16)."""
    from vla_edge.bundle import load_bundle
    from vla_edge.paths import REFERENCE_BUNDLE_DIR
    from vla_edge.policy import PolicyRunner

    obs = load_observations(observations)
    bundle = load_bundle(bundle_dir or REFERENCE_BUNDLE_DIR, verify=False)
    out = {}
    for precision in precisions:
        runner = PolicyRunner(bundle, precision=precision, providers=providers or ["CPUExecutionProvider"],
                              intra_op_threads=1, provider_options=provider_options)
        chunks = []
        for image, state, text, noise in zip(obs.images, obs.states, obs.instructions, obs.noise, strict=True):
            runner.set_instruction(text)
            chunks.append(runner.sample(runner.encode(image, state), noise.shape[0], noise=noise).actions)
        out[precision] = np.stack(chunks)
    return out


def write_results(path: Path, actions: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    doc = {"meta": meta, "actions": {k: v.tolist() for k, v in actions.items()}}
    path.write_text(json.dumps(doc) + "\n", encoding="utf-8")


def read_results(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {k: np.asarray(v, dtype=np.float64) for k, v in doc["actions"].items()}, dict(doc["meta"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ParityError(f"cannot read results {path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.board_parity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("record", help="write the observation file")
    p.add_argument("observations", type=Path)
    p = sub.add_parser("run", help="run every variant on the observations, write actions as JSON")
    p.add_argument("observations", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--bundle", type=Path, default=None)
    p.add_argument("--cpu", default=None, help="the (emulated) CPU, recorded in the results")
    p.add_argument("--providers", nargs="+", default=None,
                   help="execution providers in order (default CPU only), e.g. TensorrtExecutionProvider "
                   "CPUExecutionProvider on a Jetson")
    p.add_argument("--trt-cache", type=Path, default=None, help="TensorRT engine cache directory")
    p.add_argument("--trt-fp32", action="store_true", help="TensorRT without fp16 (the default allows fp16)")
    p = sub.add_parser("compare", help="x86 results against a board's; exit 1 on a mismatch")
    p.add_argument("reference", type=Path)
    p.add_argument("candidate", type=Path)
    p.add_argument("--bound", type=float, default=None,
                   help="one bound for every variant instead of the CPU bounds (e.g. for TensorRT fp16)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "record":
            print(f"wrote {record(args.observations)}")
            return 0
        if args.cmd == "run":
            options = ProviderOptions(trt_cache_dir=args.trt_cache, fp16=not args.trt_fp32)
            actions = run(args.observations, args.bundle, providers=args.providers, provider_options=options)
            meta = machine_meta(args.cpu, args.providers)
            write_results(args.out, actions, meta)
            print(f"wrote {args.out} ({describe(meta)})")
            return 0
        reference, ref_meta = read_results(args.reference)
        candidate, cand_meta = read_results(args.candidate)
        bounds = None if args.bound is None else {p: args.bound for p in reference}
        diffs = compare(reference, candidate, bounds)
    except VlaEdgeError as exc:
        print(f"board_parity: error: {exc}", file=sys.stderr)
        return 2
    for line in report_lines(diffs, ref_meta, cand_meta):
        print(line)
    failed = [d.precision for d in diffs if not d.passed]
    if failed:
        print(f"board_parity: {', '.join(failed)} out of bounds: this machine's actions differ from x86's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
