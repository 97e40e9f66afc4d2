"""A small flow-matching bundle whose action distribution is known exactly, for the slow-path test and benchmark.

Its chunks are smooth random trajectories of the gripper (``target_x``, ``target_y``; ``grip`` and ``done`` stay
0) that start where the measured state says the gripper is: a Gaussian process over the chunk's rows, with a
squared-exponential kernel of ``length`` ticks, ``sigma`` in normalised units, and the wander pinned to 0 one row
before the chunk (the measured position), plus an independent ``jitter``. Different noise draws give different
paths, as a real flow policy's samples do, so two chunks planned from the same state disagree where they meet,
unless the second is made to continue the first: which is what real-time chunking must do.

The step graph is the *exact* optimal velocity of flow matching for that Gaussian (x_τ = (1 − τ)·ε + τ·a with
a ~ N(μ, Σ)): u(x, τ) = μ + V·diag(k(τ, λ))·Vᵀ·(x − τμ), k(τ, λ) = (τλ − (1 − τ)) / ((1 − τ)² + τ²λ), with
Σ = V·diag(λ)·Vᵀ. So the bundle is a real schema-2 flow bundle run by the real `PolicyRunner` (encode graph →
Euler steps over an ONNX step graph), and the conditional distribution the guidance approximates is known.

Random-weight status: the graphs have no trained weights at all (their constants are this closed form); the
bundle is labelled ``random_weights`` so nothing mistakes it for a trained policy. Test and benchmark support
only (needs the ``onnx`` package, a dev dependency), never loaded by the daemon's runtime modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_edge.bundle_build import assemble_bundle

OPSET = 17
ACTION_NAMES = ["target_x", "target_y", "grip", "done"]
STATE_NAMES = ["target_x", "target_y", "grip"]  # measured by name from the action-space position


@dataclass(frozen=True)
class WanderSpec:
    horizon: int = 50
    control_rate_hz: float = 10.0
    steps: int = 10  # Euler steps (SmolVLA's count)
    length: float = 10.0  # kernel length scale, in ticks
    sigma: float = 1.0  # wander standard deviation, normalised units
    jitter: float = 0.02  # independent per-row standard deviation, normalised units
    scale: float = 0.1  # normalised unit of target_x/target_y, in workspace units (action std)
    max_delta: float = 0.08  # allowed change per tick of target_x/target_y (the reference world's MAX_STEP)
    # A slow stand-in for the real clock: the encode graph also multiplies ``burn_matmuls`` times a matrix of
    # ``burn_size``² (2·size³ flops each) that depends on the input and is then multiplied by 0: the policy's
    # answer is the same, it only takes as long as a big model's encoder would. 0: no burn.
    burn_size: int = 0
    burn_matmuls: int = 0


def covariance(spec: WanderSpec) -> np.ndarray:
    """Σ over the flattened [horizon, 4] chunk (normalised units)."""
    h, a = spec.horizon, len(ACTION_NAMES)
    rows = np.arange(-1, h, dtype=np.float64)
    kernel = np.exp(-0.5 * ((rows[:, None] - rows[None, :]) / spec.length) ** 2)
    # The wander is 0 at row -1 (the measured position): the kernel conditioned on that.
    pinned = kernel[1:, 1:] - np.outer(kernel[1:, 0], kernel[0, 1:]) / kernel[0, 0]
    sigma = np.zeros((h * a, h * a))
    for dim in (0, 1):
        index = np.arange(h) * a + dim
        sigma[np.ix_(index, index)] = spec.sigma**2 * pinned
    return sigma + spec.jitter**2 * np.eye(h * a)


def _graphs(spec: WanderSpec) -> tuple[bytes, bytes]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, a = spec.horizon, len(ACTION_NAMES)
    n = h * a

    def model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray]) -> bytes:
        graph = helper.make_graph(nodes, "g", inputs, outputs,
                                  initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m.SerializeToString()

    vi = helper.make_tensor_value_info
    # encode: μ = [x, y, 0, 0] (the normalised measured position) on every row; the image is read (× 0) only so
    # the graph takes the camera view a bundle must declare, and so is the burn (below) when there is one.
    nodes = [
        helper.make_node("Slice", ["state", "zero1", "two1", "one1"], ["xy"]),  # [1, 2]
        helper.make_node("Pad", ["xy", "pads"], ["xy00"]),  # [1, 4]
        helper.make_node("Unsqueeze", ["xy00", "one1"], ["row"]),  # [1, 1, 4]
        helper.make_node("Expand", ["row", "shape"], ["tiled"]),  # [1, H, 4]
        helper.make_node("ReduceMean", ["image"], ["im"], keepdims=0),
    ]
    inits: dict[str, np.ndarray] = {
        "zero1": np.array([0], np.int64), "two1": np.array([2], np.int64), "one1": np.array([1], np.int64),
        "pads": np.array([0, 0, 0, 2], np.int64), "shape": np.array([1, h, a], np.int64), "zero": np.float32(0.0)}
    unused = "im"
    if spec.burn_matmuls > 0 and spec.burn_size > 0:
        size = spec.burn_size
        rng = np.random.default_rng(0)
        inits["burn_w"] = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        inits["burn_ones"] = np.ones((size, size), np.float32)
        nodes += [helper.make_node("ReduceSum", ["state"], ["ssum"], keepdims=0),
                  helper.make_node("Add", ["ssum", "im"], ["seed"]),
                  helper.make_node("Mul", ["burn_ones", "seed"], ["burn0"])]
        for i in range(spec.burn_matmuls):
            nodes += [helper.make_node("MatMul", [f"burn{i}", "burn_w"], [f"burn_mm{i}"]),
                      helper.make_node("Tanh", [f"burn_mm{i}"], [f"burn{i + 1}"])]
        nodes.append(helper.make_node("ReduceMean", [f"burn{spec.burn_matmuls}"], ["burned"], keepdims=0))
        unused = "burned"
    nodes += [
        helper.make_node("Mul", [unused, "zero"], ["im0"]),
        helper.make_node("Add", ["tiled", "im0"], ["mu"]),
        helper.make_node("Identity", ["xy"], ["embedding"]),
    ]
    encode = model(
        nodes,
        [vi("image", TensorProto.FLOAT, [1, 3, 8, 8]), vi("state", TensorProto.FLOAT, [1, 3])],
        [vi("mu", TensorProto.FLOAT, [1, h, a]), vi("embedding", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    lam, vectors = np.linalg.eigh(covariance(spec))
    # step: y = x − τμ; u = μ + ((y·V) ⊙ k(τ, λ))·Vᵀ, k = (τλ − (1 − τ)) / ((1 − τ)² + τ²λ)
    step = model(
        [
            helper.make_node("Reshape", ["time", "col"], ["tau"]),  # [K, 1]
            helper.make_node("Sub", ["one", "tau"], ["rest"]),  # 1 − τ
            helper.make_node("Mul", ["tau", "lam"], ["tl"]),  # [K, n]
            helper.make_node("Sub", ["tl", "rest"], ["num"]),
            helper.make_node("Mul", ["rest", "rest"], ["rest2"]),
            helper.make_node("Mul", ["tau", "tau"], ["tau2"]),
            helper.make_node("Mul", ["tau2", "lam"], ["t2l"]),
            helper.make_node("Add", ["rest2", "t2l"], ["den"]),
            helper.make_node("Div", ["num", "den"], ["k"]),
            helper.make_node("Reshape", ["mu", "flat1"], ["mu_flat"]),  # [1, n]
            helper.make_node("Mul", ["tau", "mu_flat"], ["tmu"]),  # [K, n]
            helper.make_node("Reshape", ["x_t", "flat"], ["x_flat"]),  # [K, n]
            helper.make_node("Sub", ["x_flat", "tmu"], ["y"]),
            helper.make_node("MatMul", ["y", "v"], ["yv"]),
            helper.make_node("Mul", ["yv", "k"], ["yvk"]),
            helper.make_node("MatMul", ["yvk", "vt"], ["corr"]),
            helper.make_node("Add", ["mu_flat", "corr"], ["u"]),
            helper.make_node("Reshape", ["u", "chunk"], ["velocity"]),
        ],
        [vi("x_t", TensorProto.FLOAT, ["k", h, a]), vi("time", TensorProto.FLOAT, ["k"]),
         vi("mu", TensorProto.FLOAT, [1, h, a])],
        [vi("velocity", TensorProto.FLOAT, ["k", h, a])],
        {"col": np.array([-1, 1], np.int64), "one": np.float32(1.0), "lam": lam.astype(np.float32)[None, :],
         "flat1": np.array([1, n], np.int64), "flat": np.array([-1, n], np.int64),
         "v": vectors.astype(np.float32), "vt": vectors.T.astype(np.float32).copy(),
         "chunk": np.array([-1, h, a], np.int64)},
    )
    return encode, step


def build_wander_bundle(directory: Path, spec: WanderSpec = WanderSpec()) -> Path:
    """Write the bundle (fp32 only) to ``directory``; returns it."""
    h, a = spec.horizon, len(ACTION_NAMES)
    encode, step = _graphs(spec)
    manifest = {
        "schema_version": 2, "name": "wander", "version": "0.0.1", "created_utc": "2026-12-01T00:00:00+00:00",
        "description": "smooth random gripper paths from a known Gaussian (closed-form flow, no trained weights; "
                       "hil/wander_bundle.py): the slow-path scheduling test's policy"
                       + (f"; made slow by {spec.burn_matmuls} discarded {spec.burn_size}² matrix products"
                          if spec.burn_matmuls else ""),
        "policy": {"type": "other", "random_weights": True, "parameters": 0},
        "control_rate_hz": spec.control_rate_hz,
        "observation": {
            "cameras": [{"name": "top", "height": 8, "width": 8, "resize": "resize", "dtype": "float32",
                         "layout": "chw"}],
            "state": {"names": STATE_NAMES, "normalisation": {
                "mode": "mean_std", "mean": [0.5, 0.5, 0.0], "std": [spec.scale, spec.scale, 1.0]}},
        },
        "language": {"tokenizer": {"kind": "words", "vocabulary": ["<pad>", "wander"]}},
        "action_space": {"names": ACTION_NAMES, "low": [0.0, 0.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0, 1.0],
                         "max_delta": [spec.max_delta, spec.max_delta, 1.0, 1.0]},
        "action": {"normalisation": {"mode": "mean_std", "mean": [0.5, 0.5, 0.0, 0.0],
                                     "std": [spec.scale, spec.scale, 1.0, 1.0]},
                   "model_horizon": h, "execute_length": h},
        "graphs": {
            "encode": {"role": "encode", "inputs": [
                {"name": "image", "dtype": "float32", "shape": [1, 3, 8, 8], "source": "observation.image.top"},
                {"name": "state", "dtype": "float32", "shape": [1, 3], "source": "observation.state"}],
                "outputs": [{"name": "mu", "dtype": "float32", "shape": [1, h, a]},
                            {"name": "embedding", "dtype": "float32", "shape": [1, 2]}]},
            "step": {"role": "step", "inputs": [
                {"name": "x_t", "dtype": "float32", "shape": ["k", h, a], "source": "sampler.x"},
                {"name": "time", "dtype": "float32", "shape": ["k"], "source": "sampler.t"},
                {"name": "mu", "dtype": "float32", "shape": [1, h, a], "source": "encode.mu", "share": "broadcast"}],
                "outputs": [{"name": "velocity", "dtype": "float32", "shape": ["k", h, a]}]},
        },
        "sampler": {"kind": "flow_matching_euler", "steps": spec.steps, "time_start": 0.0, "time_end": 1.0,
                    "velocity": "action_minus_noise", "output": "step.velocity"},
        "step_end": {"max_seconds": 3600.0},
        "embedding": "encode.embedding",  # the normalised position (the OOD signal of a workspace-edge start)
        "embedding_stats": {"dim": 2, "num_samples": 1, "mean": [0.0, 0.0], "std": [3.0, 3.0],
                            "covariance": [[9.0, 0.0], [0.0, 9.0]], "precision": [[1 / 9, 0.0], [0.0, 1 / 9]],
                            "shrinkage": 0.0, "distance_quantiles": {"0.5": 1.0}},
        "variants": {"fp32": {"precision": "fp32", "quantization": "none (closed form)", "size_bytes": 0,
                              "graphs": {"encode": {"file": "fp32/encode.onnx"}, "step": {"file": "fp32/step.onnx"}}}},
    }
    assemble_bundle(directory, manifest, {"fp32/encode.onnx": encode, "fp32/step.onnx": step})
    return directory
