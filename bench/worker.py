"""One benchmark variant in its own process: ``python -m bench.worker '<json spec>'`` (started by bench.common.Worker).

Spec: ``{"kind": "torch" | "ort", "bundle": dir, "precision": "fp32"|"int8"|"int4", "samples": K,
"instruction": text, "recompute_instruction": bool, "threads": n, "seed": s,
"observation": npz with image + state (optional)}``, or ``{"kind": "scale", "dir": d,
"threads": n, "prepack": bool, "low_memory": bool}`` for the scale model, or ``{"kind": "scale_prefix", "dir": d, "threads": n,
"mode": "cached"|"recomputed", "splits": [[words, patches], ...], "steps": n}`` for one scale-model chunk, or
``{"kind": "lerobot", "checkpoint": dir, "bundle": dir, "observation": npz, "threads": n, "seed": s, "python": the
LeRobot environment's interpreter}`` (LeRobot's own predict_action_chunk) / ``{"kind": "bundle", "bundle": dir,
"precision": p, "observation": npz, "samples": K, ...}`` (vla-edge's runner on any schema-2 bundle) for bench.real_vlas.
Requests on stdin, one JSON line each: ``{"op": "run", "n": count, "what": name}`` → ``{"ms": [...]}`` (wall
time of each call, measured here; ``what`` is "chunk" for the policies, "prefill" or "step:<horizon>" for the
scale model, "prefill|chunk|steps:<words>:<patches>" for scale_prefix), ``{"op": "memory"}`` → peak/current resident MiB, ``{"op": "import", "module": m}`` → the same after importing m,
``{"op": "quit"}``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import peak_rss_mb, rss_mb


def _observation(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The parent's saved observation (so this process never loads the simulator), else one rendered here."""
    if spec.get("observation"):
        with np.load(spec["observation"]) as saved:
            return saved["image"], saved["state"].astype(np.float32)
    from hil.world import TabletopWorld

    world = TabletopWorld(spec["seed"])
    return world.render(), world.state().astype(np.float32)


def _torch_chunk(spec: dict[str, Any]) -> Callable[[], None]:
    from bench.torch_reference import TorchChunkRunner
    from vla_edge.bundle import load_bundle

    runner = TorchChunkRunner(load_bundle(spec["bundle"]), spec["threads"], spec.get("device", "cpu"))
    image, state = _observation(spec)
    runner.set_instruction(spec["instruction"])
    rng = np.random.default_rng(spec["seed"])
    shape = (spec["samples"], runner.horizon, runner.action_dim)

    def chunk() -> None:
        runner.chunk(image, state, rng.standard_normal(shape, dtype=np.float32))

    return chunk


def _ort_chunk(spec: dict[str, Any], info: dict[str, Any]) -> Callable[[], None]:
    import onnxruntime as ort

    from vla_edge.bundle import load_bundle
    from vla_edge.policy import PolicyRunner

    bundle = load_bundle(spec["bundle"])
    runner = PolicyRunner(
        bundle, precision=spec["precision"], providers=spec.get("providers") or ["CPUExecutionProvider"],
        intra_op_threads=spec["threads"], seed=spec["seed"],
    )
    info["providers"] = runner.providers_in_use  # so the parent can tell a silent fallback to the CPU
    image, state = _observation(spec)
    runner.set_instruction(spec["instruction"])
    samples = spec["samples"]
    if not spec.get("recompute_instruction"):

        def chunk() -> None:
            runner.sample(runner.encode(image, state), samples)

        return chunk

    # What a runtime without the instruction cache pays: tokenise and run the instruction encoder every chunk.
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = runner.providers_in_use
    encoder = ort.InferenceSession(
        str(bundle.graph_path(spec["precision"], "instruction_encoder")), options, providers=providers
    )
    tokenizer = bundle.tokenizer()
    text = spec["instruction"]

    def chunk_recomputed() -> None:
        encoder.run(["instruction_features"], {"tokens": tokenizer.encode(text)})
        runner.sample(runner.encode(image, state), samples)

    return chunk_recomputed


def _saved_observation(path: str) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """An observation written by ``models.lerobot.fixtures --observation``: frames by LeRobot key, state, task."""
    with np.load(path) as saved:
        frames = {k.removeprefix("frame:"): saved[k] for k in saved.files if k.startswith("frame:")}
        return frames, saved["state"].astype(np.float32), str(saved["task"])


def _lerobot_chunk(spec: dict[str, Any], info: dict[str, Any]) -> Callable[[], None]:
    """LeRobot's own per-chunk path (runs in the LeRobot environment): preprocessor + predict_action_chunk, K = 1,
    PyTorch eager fp32, the same noise every chunk."""
    from pathlib import Path

    import torch

    from models.lerobot import parity
    from models.lerobot.checkpoint import load_checkpoint

    torch.set_num_threads(spec["threads"])
    ck = load_checkpoint(Path(spec["checkpoint"]))
    info["parameters"] = ck.parameters()
    frames, state, task = _saved_observation(spec["observation"])
    history = getattr(ck.config, "n_obs_steps", 1) if ck.policy_type == "diffusion" else 1
    observation = parity.Observation(frames=[frames] * history, states=[state] * history, task=task)
    noise = parity.make_noise(parity.manifest_of(spec["bundle"]), spec["seed"])

    def chunk() -> None:
        parity.lerobot_chunk(ck, observation, noise)

    return chunk


def _bundle_chunk(spec: dict[str, Any], info: dict[str, Any]) -> Callable[[], None]:
    """vla-edge's runner on any schema-2 bundle, K samples (1 to compare with LeRobot), the same observation."""
    from vla_edge.bundle import load_bundle
    from vla_edge.policy import PolicyRunner

    runner = PolicyRunner(load_bundle(spec["bundle"]), precision=spec["precision"],
                          providers=spec.get("providers") or ["CPUExecutionProvider"],
                          intra_op_threads=spec["threads"], seed=spec["seed"])
    info["providers"] = runner.providers_in_use
    frames, state, task = _saved_observation(spec["observation"])
    views = {view.name: frames[view.lerobot_key] for view in runner.manifest.observation.cameras}
    samples = int(spec.get("samples", 1))

    def chunk() -> None:
        runner.infer(views, state, task, num_samples=samples)

    return chunk


def _scale_sessions(spec: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """The scale model's config and its prefill and denoising-step sessions."""
    from pathlib import Path

    import onnxruntime as ort

    directory = Path(spec["dir"])
    cfg = json.loads((directory / "scale_model.json").read_text())["config"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not spec.get("prepack", True):
        options.add_session_config_entry("session.disable_prepacking", "1")
    if spec.get("low_memory"):  # no arena, no planned activation buffers: allocate each activation when needed
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    prefill = ort.InferenceSession(str(directory / "prefill.onnx"), options, providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(directory / "denoise_step.onnx"), options, providers=["CPUExecutionProvider"])
    return cfg, prefill, step


def _scale_prefix_calls(spec: dict[str, Any]) -> dict[str, Callable[[], None]]:
    """One whole chunk of the scale model (prefill + ``steps`` denoising steps) per [instruction | image] split.

    ``mode`` "cached": the instruction's keys/values were computed once (here, at start) and each chunk runs the
    prefill over the image patches only, attending to them; "recomputed": each chunk runs the whole prefix.
    """
    from models.scale.prefix import empty_past, instruction_cache, no_tokens

    cfg, prefill, step = _scale_sessions(spec)
    layers, head_dim = cfg["layers"], cfg["head_dim"]
    names = [o.name for o in prefill.get_outputs()]
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, cfg["horizon"], cfg["action_dim"]), dtype=np.float32)
    step_count = int(spec["steps"])
    calls: dict[str, Callable[[], None]] = {}
    for words, patches in spec["splits"]:
        tokens = rng.integers(1, cfg["vocab"], size=(1, words), dtype=np.int64)
        image = rng.standard_normal((1, patches, cfg["patch_dim"]), dtype=np.float32)
        if spec["mode"] == "cached":
            whole = dict(zip(names, prefill.run(None, {"tokens": tokens, "patches": image, **empty_past(layers, head_dim)}),
                             strict=True))
            feed = {"tokens": no_tokens(), "patches": image, **instruction_cache(whole, layers, words)}
        else:
            feed = {"tokens": tokens, "patches": image, **empty_past(layers, head_dim)}

        def steps(prefix: dict[str, np.ndarray]) -> None:
            actions = noise
            for i in range(step_count):  # Euler steps of flow matching, as the action expert runs them
                t = np.array([1.0 - i / step_count], dtype=np.float32)
                velocity = step.run(None, {**prefix, "noisy_actions": actions, "timestep": t})[0]
                actions = actions - velocity / step_count

        def chunk(feed: dict[str, np.ndarray] = feed) -> None:
            prefix = dict(zip(names, prefill.run(None, feed), strict=True))
            prefix.pop("prefix_hidden")
            steps(prefix)

        fixed_prefix = dict(zip(names, prefill.run(None, feed), strict=True))
        fixed_prefix.pop("prefix_hidden")
        calls[f"chunk:{words}:{patches}"] = chunk
        calls[f"prefill:{words}:{patches}"] = lambda feed=feed: prefill.run(None, feed)
        # the denoising steps alone: the same work in both modes, so their ratio is the benchmark's noise check
        calls[f"steps:{words}:{patches}"] = lambda prefix=fixed_prefix: steps(prefix)
    return calls


def _scale_calls(spec: dict[str, Any]) -> dict[str, Callable[[], None]]:
    """Prefill once per chunk, and one denoising step of the action expert at any horizon."""
    from models.scale.prefix import empty_past

    cfg, prefill, step = _scale_sessions(spec)
    rng = np.random.default_rng(0)
    prefix_feed = {
        "patches": rng.standard_normal((1, cfg["patches"], cfg["patch_dim"]), dtype=np.float32),
        "tokens": rng.integers(1, cfg["vocab"], size=(1, cfg["text_tokens"]), dtype=np.int64),
        **empty_past(cfg["layers"], cfg["head_dim"]),
    }
    names = [o.name for o in prefill.get_outputs()]
    cache = {n: v for n, v in zip(names, prefill.run(None, prefix_feed), strict=True) if n != "prefix_hidden"}

    def run_prefill() -> None:
        prefill.run(None, prefix_feed)

    def step_at(horizon: int) -> Callable[[], None]:
        feed = {
            **cache,
            "noisy_actions": rng.standard_normal((1, horizon, cfg["action_dim"]), dtype=np.float32),
            "timestep": np.array([0.5], dtype=np.float32),
        }
        return lambda: step.run(None, feed)

    calls: dict[str, Callable[[], None]] = {"prefill": run_prefill}
    for horizon in sorted({1, 8, cfg["horizon"]}):
        calls[f"step:{horizon}"] = step_at(horizon)
    return calls


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    if spec["kind"] not in ("torch", "lerobot"):
        import onnxruntime  # noqa: F401 - so "before load" counts the runtime library, and only the model after

    baseline_mb = rss_mb()
    info: dict[str, Any] = {}
    try:
        if spec["kind"] == "scale":
            calls = _scale_calls(spec)
        elif spec["kind"] == "scale_prefix":
            calls = _scale_prefix_calls(spec)
        elif spec["kind"] == "lerobot":
            calls = {"chunk": _lerobot_chunk(spec, info)}
        elif spec["kind"] == "bundle":
            calls = {"chunk": _bundle_chunk(spec, info)}
        else:
            calls = {"chunk": _torch_chunk(spec) if spec["kind"] == "torch" else _ort_chunk(spec, info)}
        for call in calls.values():
            warm_ups = 1 if spec["kind"].startswith("scale") or spec["kind"] in ("lerobot", "bundle") else 3
            for _ in range(warm_ups):  # first calls pay for lazy initialisation
                call()
    except Exception as exc:  # reported to the parent, which raises a BenchError with this text
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"ready": True, "rss_before_load_mb": round(baseline_mb, 1), **info}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            times = []
            call = calls[request.get("what", "chunk")]
            for _ in range(int(request["n"])):
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1e3)
            print(json.dumps({"ms": times}), flush=True)
        elif request["op"] == "import":  # what another library (e.g. the camera's OpenCV) adds to this process
            import importlib

            importlib.import_module(request["module"])
            print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1), "rss_mb": round(rss_mb(), 1)}), flush=True)
        elif request["op"] == "memory":
            print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1), "rss_mb": round(rss_mb(), 1)}), flush=True)
        else:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
