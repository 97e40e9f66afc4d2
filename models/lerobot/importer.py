"""``python -m models.lerobot.importer PRETRAINED_DIR --out BUNDLE ...`` (what ``vla-edge import lerobot`` runs in
the LeRobot environment): export → quantize → parity gate → signed schema-2 bundle.

1. Read the checkpoint with LeRobot itself (``checkpoint``: 0.3.x or 0.4.x+ layout).
2. The policy type's export module plans the graphs (``export_<type>``): torch modules around LeRobot's own
   submodules at the graph boundaries, with each input's source and each output's shape.
3. Each graph: export to fp32 ONNX (external data), apply its fixes, check ORT against the torch module on the
   example inputs; int8 with the op set measured fastest (``onnx_tools.choose_int8``); int4 MatMulNBits. One graph
   at a time, freed after, so a 3.5 B π0 never holds more than one block's export in memory besides the model.
4. Manifest (schema 2) written into a staging folder; every variant is run by vla-edge's own runner on the same
   observations and noise as LeRobot's ``predict_action_chunk``; the figures go into ``variants.*.parity``.
5. A variant beyond its bound refuses the import, naming it and the figure (exit 2); the staging folder stays for
   inspection. Otherwise the bundle is signed and moved to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vla_edge.importers.lerobot_options import DEFAULT_COSINE_BOUNDS, DEFAULT_MAE_BOUNDS, add_import_arguments

MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
# Above this, LeRobot's fp32 model is released while the graphs are quantized and checked, and again before the
# ONNX Runtime variants run (π0: ~13 GB of fp32 weights; an ORT fp32 session holds as much again).
BIG_MODEL_PARAMETERS = 1_000_000_000


class ImportRefused(Exception):
    """The import cannot produce a bundle; the message is the one line the user sees."""


def log(message: str) -> None:
    print(f"[import] {message}", flush=True)


# ---- the plan -------------------------------------------------------------------------------------------------
def make_plan(ck: Any, options: argparse.Namespace) -> Any:
    from models.lerobot import parity

    kind = ck.policy_type
    if kind == "act":
        from models.lerobot import export_act as module
    elif kind == "diffusion":
        from models.lerobot import export_diffusion as module
    elif kind == "smolvla":
        from models.lerobot import export_smolvla as module
    elif kind in ("pi0", "pi05"):
        from models.lerobot import export_pi0 as module
    else:  # checkpoint.detect_layout already refused it
        raise ImportRefused(f"policy type {kind!r} is not supported")
    history = getattr(ck.config, "n_obs_steps", 1) if kind == "diffusion" else 1
    observation = parity.make_observations(ck, 1, history, options.seed + 7)[0]
    batches = [parity.preprocess(ck, f, s, observation.task) for f, s in zip(observation.frames, observation.states,
                                                                              strict=True)]
    try:
        return module.plan(ck, options, batches if kind == "diffusion" else batches[-1])
    except module.ExportRefused as exc:
        raise ImportRefused(str(exc)) from None


# ---- graphs ---------------------------------------------------------------------------------------------------
def _example_inputs(graph: Any, values: dict[str, Any], plan: Any) -> tuple:
    """Torch example inputs of one graph from the runtime sources and earlier outputs (batch K for step graphs)."""
    import torch

    k = plan.step_batch
    out = []
    for decl in graph.inputs:
        value = values[decl.source]
        tensor = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        if graph.role == "step" and decl.share == "repeat" and not decl.source.startswith("sampler.") \
                and decl.batch_axis is not None and tensor.shape[decl.batch_axis] == 1 and k > 1:
            tensor = tensor.repeat_interleave(k, dim=decl.batch_axis)
        out.append(tensor)
    return tuple(out)


def _sampler_examples(plan: Any) -> dict[str, np.ndarray]:
    sampler = plan.sections["sampler"]
    if sampler["kind"] == "single_pass":
        return {}
    action = plan.sections["action"]
    k = plan.step_batch
    width = action.get("padded_dim") or len(plan.sections["action_space"]["names"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((k, action["model_horizon"], width)).astype(np.float32)
    if sampler["kind"] == "flow_matching_euler":
        t = np.linspace(sampler["time_start"], sampler["time_end"], k, endpoint=False).astype(np.float32)
    else:
        t = np.linspace(sampler["num_train_timesteps"] - 1, 0, k).astype(np.int64)
    return {"sampler.x": x, "sampler.t": t}


def export_graphs(plan: Any, staging: Path) -> dict[str, Any]:
    """Phase 1 (torch): every graph of the plan to ``staging/fp32/``, and the inputs and torch outputs to check it
    with. Nothing else is loaded meanwhile, so the peak is the torch model plus one graph being exported (π0 at
    full size: ~13 GB of fp32 weights + one block)."""
    import torch

    from models.lerobot import onnx_tools as ot

    values: dict[str, Any] = {k: np.asarray(v) for k, v in plan.example_sources.items()}
    values.update(_sampler_examples(plan))
    exported: dict[str, Any] = {}
    for graph in plan.graphs:
        started = time.monotonic()
        module = graph.build()
        args = _example_inputs(graph, values, plan)
        with torch.no_grad():
            expected = module(*args)
        expected = expected if isinstance(expected, tuple | list) else (expected,)
        fp32 = staging / "fp32" / f"{graph.name}.onnx"
        try:
            ot.export_module(module, args, fp32, [i.name for i in graph.inputs], [o.name for o in graph.outputs],
                             graph.dynamic_axes(), graph.exporter)
        except Exception as exc:  # the exporters raise many types; name the graph and the exporter
            raise ImportRefused(f"graph {graph.name!r}: the {graph.exporter} exporter failed: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
        feeds = {decl.name: (a.detach().numpy() if hasattr(a, "detach") else np.asarray(a))
                 for decl, a in zip(graph.inputs, args, strict=True)}
        expected_np = [e.detach().float().numpy() if e.dtype.is_floating_point else e.detach().numpy()
                       for e in expected]
        exported[graph.name] = (feeds, expected_np, time.monotonic() - started)
        # outputs at batch 1 for the next graphs (step graphs' outputs are not read by later graphs)
        for decl, value in zip(graph.outputs, expected, strict=True):
            values[f"{graph.name}.{decl.name}"] = value.detach()
        del module, args, expected
        gc.collect()
    return exported


def finish_graphs(plan: Any, staging: Path, exported: dict[str, Any], precisions: list[str],
                  threads: int) -> dict[str, Any]:
    """Phase 2 (no torch needed): fix, check ORT against the torch outputs, int8 by measurement, int4; one graph at
    a time."""
    from models.lerobot import onnx_tools as ot

    reports: dict[str, Any] = {}
    for graph in plan.graphs:
        started = time.monotonic()
        feeds, expected_np, export_s = exported[graph.name]
        fp32 = staging / "fp32" / f"{graph.name}.onnx"
        report = ot.ExportReport(graph=graph.name, exporter=graph.exporter)
        report.fixes = ot.apply_fixes(fp32, graph.fixes)
        report.max_abs_error = ot.max_abs_error(fp32, feeds, expected_np, threads)
        if "int8" in precisions:
            choice, timings, count = ot.choose_int8(fp32, staging / "int8" / fp32.name, feeds, threads,
                                                    graph.int8_candidates)
            report.int8_choice, report.int8_timings_ms, report.int8_quantized = choice, timings, count
        if "int4" in precisions:
            report.int4_quantized = ot.quantize_int4(fp32, staging / "int4" / fp32.name)
        reports[graph.name] = report
        log(f"graph {graph.name}: exported ({graph.exporter}) in {export_s:.0f} s, checked and quantized in "
            f"{time.monotonic() - started:.0f} s; ORT vs torch max |diff| {report.max_abs_error:.2e}"
            + (f"; int8 {report.int8_choice} ({report.int8_timings_ms})" if report.int8_choice else "")
            + (f"; int4 {report.int4_quantized} MatMulNBits/GatherBlockQuantized" if "int4" in precisions else ""))
    return reports


# ---- manifest -------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _quantization_text(precision: str, reports: dict[str, Any]) -> str:
    if precision == "fp32":
        return "fp32 export; " + "; ".join(
            f"{g}: {r.exporter}, ORT vs torch max |diff| {r.max_abs_error:.1e}" + (f", fixes: {', '.join(r.fixes)}"
                                                                                  if r.fixes else "")
            for g, r in reports.items())
    if precision == "int8":
        return "dynamic int8 (per-channel weights, activations quantized at run time), op set per graph chosen by " \
               "measured latency: " + "; ".join(
                   f"{g}: {r.int8_choice} ({r.int8_quantized} nodes; ms {r.int8_timings_ms})" for g, r in reports.items())
    return "int4 MatMulNBits (block 32, asymmetric, accuracy_level 4; Gemm → MatMul; MatMuls narrower than 64 and " \
           "Convs stay fp32): " + "; ".join(f"{g}: {r.int4_quantized} MatMulNBits" for g, r in reports.items())


def build_manifest(plan: Any, ck: Any, options: argparse.Namespace, staging: Path, precisions: list[str],
                   reports: dict[str, Any], fps: float, name: str,
                   parity: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    from models.lerobot.fixtures import LABEL

    variants = {}
    for precision in precisions:
        variants[precision] = {
            "precision": precision,
            "quantization": _quantization_text(precision, reports),
            "graphs": {g.name: {"file": f"{precision}/{g.name}.onnx", "external_data": [f"{g.name}.onnx.data"]}
                       for g in plan.graphs},
            "size_bytes": 0,
            "parity": (parity or {}).get(precision),
        }
    random_weights = ck.random_weights or options.random_weights
    config_record = {k: v for k, v in _config_record(ck).items()}
    description = (f"LeRobot {ck.policy_type} imported from {ck.path} (layout {ck.layout})."
                   + (f" {LABEL}." if random_weights else "") + " " + " ".join(plan.notes))
    manifest = {
        "schema_version": 2,
        "name": name,
        "version": options.version,
        "description": description[:10_000],
        "created_utc": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        "policy": {"type": ck.policy_type, "random_weights": bool(random_weights), "parameters": ck.parameters(),
                   "source": f"{ck.path} (LeRobot {ck.layout}.x layout; imported with lerobot "
                             f"{_lerobot_version()}, torch {_torch_version()})",
                   "config": config_record},
        "control_rate_hz": fps,
        "observation": plan.sections["observation"],
        "language": plan.sections["language"],
        "action_space": plan.sections["action_space"],
        "action": plan.sections["action"],
        "graphs": {g.name: g.manifest() for g in plan.graphs},
        "sampler": plan.sections["sampler"],
        "step_end": _step_end(plan, options),
        "embedding": None,
        "files": {},
        "variants": variants,
    }
    return manifest


def _step_end(plan: Any, options: argparse.Namespace) -> dict[str, Any]:
    """The task runner's check and ``--max-seconds``; and ``done`` > 0.5 when the policy has an action named
    ``done`` (trained on vla-edge's reference-world recordings: the step-done flag is one of the actions)."""
    rule: dict[str, Any] = {"max_seconds": options.max_seconds, "external": True}
    if "done" in plan.sections["action_space"]["names"]:
        rule.update(done_action="done", done_threshold=0.5)
    return rule


def _config_record(ck: Any) -> dict[str, Any]:
    keep = ("chunk_size", "n_action_steps", "n_obs_steps", "horizon", "num_inference_steps", "num_steps",
            "noise_scheduler_type", "num_train_timesteps", "prediction_type", "max_state_dim", "max_action_dim",
            "paligemma_variant", "action_expert_variant", "vlm_model_name", "tokenizer_max_length", "dim_model",
            "n_encoder_layers", "num_vlm_layers", "num_expert_layers", "attention_mode")
    out: dict[str, Any] = {}
    for key in keep:
        value = getattr(ck.config, key, None)
        if isinstance(value, str | int | float | bool):
            out[key] = value
    return out


def _lerobot_version() -> str:
    try:
        from importlib.metadata import version

        return version("lerobot")
    except Exception:  # noqa: BLE001 - metadata missing in an odd install: not fatal
        return "?"


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def write_manifest(staging: Path, manifest: dict[str, Any]) -> Any:
    """Fill ``files`` (sha256, size of every file in the folder) and each variant's size, validate, write."""
    from pydantic import ValidationError

    from vla_edge.bundle_schema import BundleManifestV2

    files = {}
    for path in sorted(staging.rglob("*")):
        rel = path.relative_to(staging).as_posix()
        if path.is_file() and rel not in (MANIFEST, SIGNATURE):
            files[rel] = {"sha256": _sha256(path), "size_bytes": path.stat().st_size}
    data = json.loads(json.dumps(manifest))
    data["files"] = files
    for variant in data["variants"].values():
        size = 0
        for graph in variant["graphs"].values():
            folder = graph["file"].rsplit("/", 1)[0]
            size += files[graph["file"]]["size_bytes"] + sum(files[f"{folder}/{e}"]["size_bytes"]
                                                            for e in graph["external_data"])
        variant["size_bytes"] = size
    try:
        validated = BundleManifestV2.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ImportRefused(f"the manifest this import wrote is invalid (a bug in the importer): {problems}") from None
    (staging / MANIFEST).write_text(validated.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return validated


# ---- parity ---------------------------------------------------------------------------------------------------
def run_parity(ck: Any, staging: Path, precisions: list[str], options: argparse.Namespace,
               history: int, release_policy: bool = False) -> dict[str, dict[str, Any]]:
    from models.lerobot import parity
    from models.lerobot.metrics import verdict

    cosine_bounds = {**DEFAULT_COSINE_BOUNDS, **options.cosine_bounds}
    mae_bounds = {**DEFAULT_MAE_BOUNDS, **options.mae_bounds}
    observations = parity.make_observations(ck, options.observations, history, options.seed)
    started = time.monotonic()
    reference = parity.reference_chunks(ck, parity.manifest_of(staging), observations, options.seed)
    log(f"LeRobot reference: {len(observations)} chunks in {time.monotonic() - started:.0f} s")
    if release_policy:  # π0 at full size: LeRobot's fp32 model and an fp32 variant do not fit in memory together
        ck.policy = None
        gc.collect()
    out: dict[str, dict[str, Any]] = {}
    failures = []
    for precision in precisions:
        started = time.monotonic()
        figures, token_mismatches = parity.compare(reference, staging, precision, observations, options.seed,
                                                   options.threads)
        problem = verdict(figures, cosine_bounds[precision], mae_bounds[precision])
        if token_mismatches:
            problem = (f"prompt tokens differ from LeRobot's for {token_mismatches} of {len(observations)} "
                       "observations (tokenizer or prompt template)")
        out[precision] = {
            "reference": f"lerobot {_lerobot_version()} predict_action_chunk, torch {_torch_version()} fp32 eager, "
                         "same weights, observations and noise (every DDPM step's); figures in normalised action units",
            "observations": figures.observations, "action_mae": figures.mae, "action_max_abs_error": figures.max_abs,
            "cosine": max(-1.0, min(1.0, figures.cosine)), "reference_spread": figures.spread,
            "mae_bound": mae_bounds[precision], "cosine_bound": cosine_bounds[precision], "passed": problem is None,
        }
        log(f"parity {precision}: MAE {figures.mae:.2e}, max {figures.max_abs:.2e}, cosine {figures.cosine:.6f} "
            f"(worst {figures.cosine_min:.6f}), centred cosine {figures.centered_cosine:.4f}, spread "
            f"{figures.spread:.3f}, MAE/spread {figures.relative_mae:.3f} "
            f"over {figures.observations} observations ({time.monotonic() - started:.0f} s)"
            + ("" if problem is None else f" -> FAILED: {problem}"))
        if problem is not None:
            failures.append(f"{precision}: {problem}")
    if failures:
        raise ParityRefused(failures, out)
    return out


class ParityRefused(ImportRefused):
    def __init__(self, failures: list[str], figures: dict[str, dict[str, Any]]) -> None:
        super().__init__("parity against LeRobot failed for " + "; ".join(failures))
        self.figures = figures


def _forget_modules(plan: Any) -> Any:
    """The plan without its module builders (they hold LeRobot's model)."""
    for graph in plan.graphs:
        graph.build = _released
    return plan


def _released() -> Any:
    raise RuntimeError("the torch model was released")


def _rss_gib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**30
    except ImportError:  # psutil is a vla-edge dependency; only a broken environment lacks it
        return float("nan")


# ---- the command ----------------------------------------------------------------------------------------------
def fps_of(ck: Any, options: argparse.Namespace) -> float:
    if options.fps is not None:
        if options.fps <= 0:
            raise ImportRefused(f"--fps must be positive, got {options.fps}")
        return float(options.fps)
    train_config = ck.path / "train_config.json"
    if train_config.is_file():
        try:
            env = json.loads(train_config.read_text()).get("env") or {}
            if env.get("fps"):
                return float(env["fps"])
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            pass
    raise ImportRefused("pass --fps HZ: the control rate the policy was trained at (the dataset's fps); the "
                        "checkpoint does not record it")


def run(options: argparse.Namespace) -> int:
    from models.lerobot.checkpoint import CheckpointError, load_checkpoint

    out = options.out.expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not options.force:
        raise ImportRefused(f"{out} exists and is not empty (pass --force to replace it)")
    if options.key is None and not options.unsigned:
        raise ImportRefused("pass --key PRIVATE.pem to sign the bundle, or --unsigned")
    if options.observations < 2:
        raise ImportRefused("--observations must be at least 2 (the spread of the outputs needs several)")
    import torch

    torch.set_num_threads(options.threads)
    started = time.monotonic()
    try:
        ck = load_checkpoint(options.pretrained_dir, vlm_dir=options.vlm, tokenizer_dir=options.tokenizer)
    except CheckpointError as exc:
        raise ImportRefused(str(exc)) from None
    if options.dataset is not None:
        from models.lerobot.env_words import EnvWordsError, read_dataset

        try:
            ck.env_words = read_dataset(options.dataset)
        except EnvWordsError as exc:
            raise ImportRefused(str(exc)) from None
        options.state_names = options.state_names or ck.env_words.state_names
        options.action_names = options.action_names or ck.env_words.action_names
    fps = fps_of(ck, options)
    label = " (RANDOM WEIGHTS)" if (ck.random_weights or options.random_weights) else ""
    log(f"{ck.policy_type}{label}: {ck.parameters() / 1e6:.1f} M parameters, LeRobot {ck.layout}.x layout, "
        f"{ck.path}")
    plan = make_plan(ck, options)
    precisions = list(options.precisions)
    work = Path(tempfile.mkdtemp(prefix="vla-import-")) if options.work is None else options.work
    staging = out.with_name(out.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        exported = export_graphs(plan, staging)
        big = ck.parameters() > BIG_MODEL_PARAMETERS
        if big:  # free LeRobot's model while the graphs are quantized and checked; reloaded for the reference
            ck.policy = None
            plan = _forget_modules(plan)
            gc.collect()
            log(f"released LeRobot's model for quantization ({_rss_gib():.1f} GiB resident)")
        reports = finish_graphs(plan, staging, exported, precisions, options.threads)
        del exported
        if big:
            env_words = ck.env_words
            ck = load_checkpoint(options.pretrained_dir, vlm_dir=options.vlm, tokenizer_dir=options.tokenizer)
            ck.env_words = env_words
        if plan.tokenizer_json is not None:
            (staging / "tokenizer.json").write_bytes(plan.tokenizer_json)
        name = options.name or f"{ck.policy_type}-{ck.path.parent.name if ck.path.name == 'pretrained_model' else ck.path.name}"
        name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in name)
        manifest = build_manifest(plan, ck, options, staging, precisions, reports, fps, name)
        write_manifest(staging, manifest)
        history = plan.sections["observation"].get("history", 1)
        try:
            figures = run_parity(ck, staging, precisions, options, history, release_policy=big)
        except ParityRefused as exc:
            manifest = build_manifest(plan, ck, options, staging, precisions, reports, fps, name, exc.figures)
            write_manifest(staging, manifest)
            raise ImportRefused(f"{exc} (bundle left unsigned in {staging} for inspection)") from None
        manifest = build_manifest(plan, ck, options, staging, precisions, reports, fps, name, figures)
        write_manifest(staging, manifest)
        if not options.unsigned:
            from vla_edge.errors import VlaEdgeError
            from vla_edge.signing import sign_bundle

            try:
                sign_bundle(staging, options.key)
            except VlaEdgeError as exc:
                raise ImportRefused(str(exc)) from None
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if options.work is None:
            shutil.rmtree(work, ignore_errors=True)
    sizes = {p: sum(f.stat().st_size for f in (out / p).glob("*")) for p in precisions}
    log(f"wrote {out} ({', '.join(f'{p} {s / 2**20:.1f} MiB' for p, s in sizes.items())}), "
        f"{'signed' if not options.unsigned else 'UNSIGNED'}, in {time.monotonic() - started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.lerobot.importer", description=__doc__.splitlines()[0])
    add_import_arguments(parser)
    options = parser.parse_args(argv)
    try:
        return run(options)
    except ImportRefused as exc:
        print(f"vla-edge import: error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
