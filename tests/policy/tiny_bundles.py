"""Small schema-2 bundles built from ONNX graphs written with the ``onnx`` helper API, one per sampler and role
layout, with shapes unlike the reference (several cameras, padded state/action, horizons that are not powers of 2).

The graphs compute simple functions with a known answer so the tests can say what the runner must return:

* flow: the step graph outputs the *exact* velocity of the straight path to a target chunk a*(context), so Euler
  integration lands on a* whatever the noise, but only with the right time direction and velocity sign;
* diffusion: a UNet stand-in ε(x, t, cond) whose numpy twin ``ddpm_model`` lets diffusers' own scheduler run the
  same loop;
* single_pass: a decoder whose chunk is a fixed function of the encoder's memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vla_edge.bundle_build import assemble_bundle

OPSET = 17


def _model(nodes: list, inputs: list, outputs: list, inits: list) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _c(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _base(name: str, policy_type: str) -> dict[str, Any]:
    return {
        "schema_version": 2, "name": name, "version": "0.0.1", "created_utc": "2026-12-01T00:00:00+00:00",
        "description": "tiny test bundle (random-weight-like stand-in graphs)",
        "policy": {"type": policy_type, "random_weights": True, "parameters": 0},
        "control_rate_hz": 10.0,
    }


def _variants(graph_names: list[str], precisions: tuple[str, ...] = ("fp32",)) -> dict[str, Any]:
    return {p: {"precision": p, "quantization": "none (test)", "size_bytes": 0,
                "graphs": {g: {"file": f"{p}/{g}.onnx"} for g in graph_names}} for p in precisions}


# ---- flow matching (SmolVLA-like) -------------------------------------------------------------------------------
FLOW_H, FLOW_A_PAD, FLOW_A, FLOW_S = 6, 4, 3, 3
FLOW_EXECUTE = 5
FLOW_PATTERN = (np.arange(FLOW_H * FLOW_A_PAD, dtype=np.float32).reshape(FLOW_H, FLOW_A_PAD) / 10.0 - 1.0)


def flow_target(c: float) -> np.ndarray:
    """a*(c): the normalised chunk the flow step graph steers to, [H, A_pad]."""
    return np.tanh(np.float32(c) * FLOW_PATTERN).astype(np.float32)


def _tokenizer_json() -> bytes:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "pick", "up", "the", "red", "cube", "place", "it", "\n", "task", ":", "state", ",",
             ";", "action"] + [str(i) for i in range(256)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split("\n", "isolated")])
    return tok.to_str().encode()


def build_flow_bundle(directory: Path, time_start: float = 1.0, velocity: str = "noise_minus_action",
                      share: str = "broadcast", state_in_prompt: bool = False) -> Path:
    """Two cameras (float32 CHW, resize-with-pad left/top and plain resize), state 2 → padded 4, actions 3 → padded
    4, horizon 6 of which 5 executed, a tokenizer.json, prefix graph with a bool mask output, expert step graph."""
    L = 8  # noqa: N806
    # prefix: c = mean(img_a) + mean(img_b) + 0.1·sum(state) + 0.01·Σ tokens·mask + 0.5·Σ mask_a
    prefix_nodes = [
        helper.make_node("ReduceMean", ["image_a"], ["ma"], keepdims=0),
        helper.make_node("ReduceMean", ["image_b"], ["mb"], keepdims=0),
        helper.make_node("ReduceSum", ["state"], ["ss"], keepdims=0),
        helper.make_node("Cast", ["lang_mask"], ["lmf"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["tokens"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["tf", "lmf"], ["tm"]),
        helper.make_node("ReduceSum", ["tm"], ["ts"], keepdims=0),
        helper.make_node("Cast", ["mask_a"], ["maf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["maf"], ["msum"], keepdims=0),
        helper.make_node("Mul", ["ss", "k01"], ["ss1"]),
        helper.make_node("Mul", ["ts", "k001"], ["ts1"]),
        helper.make_node("Mul", ["msum", "k05"], ["ms1"]),
        helper.make_node("Sum", ["ma", "mb", "ss1", "ts1", "ms1"], ["c"]),
        helper.make_node("Reshape", ["c", "shape11"], ["c11"]),
        helper.make_node("Mul", ["c11", "ones_kv"], ["kv"]),  # [1, 3] = c
        helper.make_node("Identity", ["lang_mask"], ["pad_mask"]),
        helper.make_node("Identity", ["c11"], ["embedding"]),
    ]
    prefix = _model(
        prefix_nodes,
        [_vi("image_a", TensorProto.FLOAT, [1, 3, 8, 8]), _vi("mask_a", TensorProto.BOOL, [1]),
         _vi("image_b", TensorProto.FLOAT, [1, 3, 6, 6]),
         _vi("tokens", TensorProto.INT64, [1, L]), _vi("lang_mask", TensorProto.BOOL, [1, L]),
         _vi("state", TensorProto.FLOAT, [1, 4])],
        [_vi("kv", TensorProto.FLOAT, [1, 3]), _vi("pad_mask", TensorProto.BOOL, [1, L]),
         _vi("embedding", TensorProto.FLOAT, [1, 1])],
        [_c("k01", np.float32(0.1)), _c("k001", np.float32(0.01)), _c("k05", np.float32(0.5)),
         _c("shape11", np.array([1, 1], np.int64)), _c("ones_kv", np.ones((1, 3), np.float32))],
    )
    # step: a* = tanh(c · pattern), c = kv[:, 0] (+ 0·Σmask so the bool mask is read);
    # noise at time_start: x_t = a* + (x0 − a*)·|t − time_end|, so v = (x − a*)/|t − te| · sign
    te = 1.0 - time_start
    # x_t − a* = (x0 − a*)·|t − te| in either time direction, so ε − a* = (x_t − a*)/|t − te|
    sign = 1.0 if velocity == "noise_minus_action" else -1.0
    step_nodes = [
        helper.make_node("Slice", ["kv", "s0", "s1", "ax1"], ["c"]),  # [B, 1]
        helper.make_node("Cast", ["pad_mask"], ["pmf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["pmf"], ["pms"], keepdims=0),
        helper.make_node("Mul", ["pms", "zero"], ["pm0"]),
        helper.make_node("Add", ["c", "pm0"], ["c2"]),
        helper.make_node("Unsqueeze", ["c2", "ax2"], ["c3"]),  # [B, 1, 1]
        helper.make_node("Mul", ["c3", "pattern"], ["cp"]),
        helper.make_node("Tanh", ["cp"], ["target"]),  # [B, H, A]
        helper.make_node("Sub", ["x_t", "target"], ["diff"]),
        helper.make_node("Sub", ["time", "te"], ["dt0"]),
        helper.make_node("Abs", ["dt0"], ["dist"]),
        helper.make_node("Reshape", ["dist", "shape_k11"], ["dist3"]),
        helper.make_node("Div", ["diff", "dist3"], ["v0"]),
        helper.make_node("Mul", ["v0", "sign"], ["velocity"]),
    ]
    step = _model(
        step_nodes,
        [_vi("x_t", TensorProto.FLOAT, ["k", FLOW_H, FLOW_A_PAD]), _vi("time", TensorProto.FLOAT, ["k"]),
         _vi("kv", TensorProto.FLOAT, ["kb", 3]), _vi("pad_mask", TensorProto.BOOL, ["kb", L])],
        [_vi("velocity", TensorProto.FLOAT, ["k", FLOW_H, FLOW_A_PAD])],
        [_c("s0", np.array([0], np.int64)), _c("s1", np.array([1], np.int64)), _c("ax1", np.array([1], np.int64)),
         _c("ax2", np.array([2], np.int64)), _c("zero", np.float32(0.0)), _c("pattern", FLOW_PATTERN),
         _c("te", np.float32(te)), _c("shape_k11", np.array([-1, 1, 1], np.int64)), _c("sign", np.float32(sign))],
    )
    tok: dict[str, Any] = {"kind": "hf_tokenizers", "file": "tokenizer.json", "prompt": "{task}\n", "max_length": L,
                           "padding": "max_length", "pad_id": 0, "stand_in": True}
    if state_in_prompt:
        tok.update(prompt="task : {task} , state : {state} ;\naction", clean_task=True,
                   state_in_prompt={"bins": 256, "pad_to": 4})
    kv_shape: list[Any] = [1, 3] if share == "broadcast" else ["k", 3]
    mask_shape: list[Any] = [1, L] if share == "broadcast" else ["k", L]
    manifest = {
        **_base("tiny-flow", "smolvla"),
        "observation": {
            "cameras": [
                {"name": "top", "height": 8, "width": 8, "resize": "resize_with_pad", "pad_side": "left_top",
                 "dtype": "float32", "layout": "chw", "value_range": [-1.0, 1.0], "pad_value": -1.0},
                {"name": "wrist", "height": 6, "width": 6, "resize": "resize", "interpolation": "area",
                 "dtype": "float32", "layout": "chw"},
            ],
            "state": {"names": ["joint_a", "joint_b"], "padded_dim": 4,
                      "normalisation": {"mode": "mean_std", "mean": [0.1, 0.2], "std": [2.0, 2.0]}},
        },
        "language": {"tokenizer": tok},
        "action_space": {"names": ["joint_a", "joint_b", "gripper"], "low": [-5.0, -5.0, 0.0],
                         "high": [5.0, 5.0, 1.0], "max_delta": [10.0, 10.0, 1.0]},
        "action": {"normalisation": {"mode": "mean_std", "mean": [0.5, -0.5, 0.5], "std": [2.0, 3.0, 0.5]},
                   "padded_dim": FLOW_A_PAD, "model_horizon": FLOW_H, "execute_start": 0,
                   "execute_length": FLOW_EXECUTE},
        "graphs": {
            "prefix": {"role": "encode", "inputs": [
                {"name": "image_a", "dtype": "float32", "shape": [1, 3, 8, 8], "source": "observation.image.top"},
                {"name": "mask_a", "dtype": "bool", "shape": [1], "source": "observation.image_mask.top"},
                {"name": "image_b", "dtype": "float32", "shape": [1, 3, 6, 6], "source": "observation.image.wrist"},
                {"name": "tokens", "dtype": "int64", "shape": [1, L], "source": "language.tokens"},
                {"name": "lang_mask", "dtype": "bool", "shape": [1, L], "source": "language.attention_mask"},
                {"name": "state", "dtype": "float32", "shape": [1, 4], "source": "observation.state"}],
                "outputs": [{"name": "kv", "dtype": "float32", "shape": [1, 3]},
                            {"name": "pad_mask", "dtype": "bool", "shape": [1, L]},
                            {"name": "embedding", "dtype": "float32", "shape": [1, 1]}]},
            "expert_step": {"role": "step", "inputs": [
                {"name": "x_t", "dtype": "float32", "shape": ["k", FLOW_H, FLOW_A_PAD], "source": "sampler.x"},
                {"name": "time", "dtype": "float32", "shape": ["k"], "source": "sampler.t"},
                {"name": "kv", "dtype": "float32", "shape": kv_shape, "source": "prefix.kv", "share": share},
                {"name": "pad_mask", "dtype": "bool", "shape": mask_shape, "source": "prefix.pad_mask",
                 "share": share}],
                "outputs": [{"name": "velocity", "dtype": "float32", "shape": ["k", FLOW_H, FLOW_A_PAD]}]},
        },
        "sampler": {"kind": "flow_matching_euler", "steps": FLOW_S, "time_start": time_start, "time_end": te,
                    "velocity": velocity, "output": "expert_step.velocity"},
        "step_end": {"max_chunks": 3, "external": True},
        "embedding": "prefix.embedding",
        "embedding_stats": {"dim": 1, "num_samples": 10, "mean": [0.0], "std": [1.0], "covariance": [[1.0]],
                            "precision": [[1.0]], "shrinkage": 0.0, "distance_quantiles": {"0.5": 0.7}},
        "variants": _variants(["prefix", "expert_step"], ("fp32", "int8")),
    }
    files = {"tokenizer.json": _tokenizer_json()}
    for p in ("fp32", "int8"):
        files[f"{p}/prefix.onnx"] = prefix
        files[f"{p}/expert_step.onnx"] = step
    assemble_bundle(directory, manifest, files)
    return directory


# ---- diffusion (Diffusion Policy-like) --------------------------------------------------------------------------
DP_H, DP_A, DP_T, DP_COND = 10, 3, 2, 4


def ddpm_model(x: np.ndarray, t: np.ndarray, cond: np.ndarray) -> np.ndarray:
    """The numpy twin of the tiny UNet: ε = 0.3·x + 0.2·tanh(cond·w) + 0.001·t (float32, as the graph)."""
    w = np.linspace(-1, 1, DP_COND * DP_H * DP_A, dtype=np.float32).reshape(DP_COND, DP_H * DP_A)
    bias = np.tanh(cond.astype(np.float32) @ w).reshape(-1, DP_H, DP_A)
    tt = t.astype(np.float32).reshape(-1, 1, 1)
    return (np.float32(0.3) * x + np.float32(0.2) * bias + np.float32(0.001) * tt).astype(np.float32)


def build_diffusion_bundle(directory: Path, sampler: dict[str, Any]) -> Path:
    """One uint8 camera (5×7, HWC) with 2 frames of history, state 2 (min_max), actions 3 (min_max), horizon 10 of
    which 6 executed from index 1, an encoder making a 4-value condition and a UNet stand-in with int64 timestep."""
    # encoder: cond = [mean(frame t−1)/255, mean(frame t)/255, state_t−1 · [1, 1], state_t · [1, −1]]
    enc_nodes = [
        helper.make_node("Cast", ["image"], ["imf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["imf"], ["im_mean"], axes=[2, 3, 4], keepdims=0),  # [1, T]
        helper.make_node("Mul", ["im_mean", "inv255"], ["im_m"]),
        helper.make_node("MatMul", ["state", "sw"], ["sp"]),  # [1, T, 1]
        helper.make_node("Reshape", ["sp", "shape12"], ["sp2"]),
        helper.make_node("Concat", ["im_m", "sp2"], ["cond"], axis=1),
    ]
    encoder = _model(
        enc_nodes,
        [_vi("image", TensorProto.UINT8, [1, DP_T, 5, 7, 3]), _vi("state", TensorProto.FLOAT, [1, DP_T, 2])],
        [_vi("cond", TensorProto.FLOAT, [1, DP_COND])],
        [_c("inv255", np.float32(1 / 255)),
         _c("sw", np.array([[1.0], [1.0]], np.float32)), _c("shape12", np.array([1, DP_T], np.int64))],
    )
    w = np.linspace(-1, 1, DP_COND * DP_H * DP_A, dtype=np.float32).reshape(DP_COND, DP_H * DP_A)
    unet_nodes = [
        helper.make_node("MatMul", ["cond", "w"], ["cw"]),
        helper.make_node("Tanh", ["cw"], ["tw"]),
        helper.make_node("Reshape", ["tw", "shape_ha"], ["bias"]),
        helper.make_node("Mul", ["bias", "k02"], ["b2"]),
        helper.make_node("Mul", ["sample", "k03"], ["x3"]),
        helper.make_node("Cast", ["timestep"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["tf", "shape_k11"], ["t3"]),
        helper.make_node("Mul", ["t3", "k0001"], ["tt"]),
        helper.make_node("Sum", ["x3", "b2", "tt"], ["epsilon"]),
    ]
    unet = _model(
        unet_nodes,
        [_vi("sample", TensorProto.FLOAT, ["k", DP_H, DP_A]), _vi("timestep", TensorProto.INT64, ["k"]),
         _vi("cond", TensorProto.FLOAT, ["k", DP_COND])],
        [_vi("epsilon", TensorProto.FLOAT, ["k", DP_H, DP_A])],
        [_c("w", w), _c("shape_ha", np.array([-1, DP_H, DP_A], np.int64)), _c("k02", np.float32(0.2)),
         _c("k03", np.float32(0.3)), _c("k0001", np.float32(0.001)), _c("shape_k11", np.array([-1, 1, 1], np.int64))],
    )
    manifest = {
        **_base("tiny-diffusion", "diffusion"),
        "observation": {
            "cameras": [{"name": "top", "height": 5, "width": 7, "resize": "resize", "dtype": "uint8"}],
            "state": {"names": ["x", "y"], "normalisation": {"mode": "min_max", "low": [0.0, 0.0], "high": [2.0, 4.0]}},
            "history": DP_T,
        },
        "language": {"tokenizer": {"kind": "words", "vocabulary": ["<pad>", "task"]}},
        "action_space": {"names": ["ax", "ay", "az"], "low": [-1.0, -1.0, -1.0], "high": [3.0, 3.0, 3.0],
                         "max_delta": [4.0, 4.0, 4.0]},
        "action": {"normalisation": {"mode": "min_max", "low": [0.0, 0.0, 0.0], "high": [2.0, 2.0, 2.0]},
                   "model_horizon": DP_H, "execute_start": 1, "execute_length": 6},
        "graphs": {
            "obs_encoder": {"role": "encode", "inputs": [
                {"name": "image", "dtype": "uint8", "shape": [1, DP_T, 5, 7, 3], "source": "observation.image.top"},
                {"name": "state", "dtype": "float32", "shape": [1, DP_T, 2], "source": "observation.state"}],
                "outputs": [{"name": "cond", "dtype": "float32", "shape": [1, DP_COND]}]},
            "unet": {"role": "step", "inputs": [
                {"name": "sample", "dtype": "float32", "shape": ["k", DP_H, DP_A], "source": "sampler.x"},
                {"name": "timestep", "dtype": "int64", "shape": ["k"], "source": "sampler.t"},
                {"name": "cond", "dtype": "float32", "shape": ["k", DP_COND], "source": "obs_encoder.cond"}],
                "outputs": [{"name": "epsilon", "dtype": "float32", "shape": ["k", DP_H, DP_A]}]},
        },
        "sampler": {**sampler, "output": "unet.epsilon"},
        "step_end": {"max_seconds": 2.0},
        "variants": _variants(["obs_encoder", "unet"]),
    }
    assemble_bundle(directory, manifest, {"fp32/obs_encoder.onnx": encoder, "fp32/unet.onnx": unet})
    return directory


# ---- single pass (ACT-like) + auxiliary success detector ---------------------------------------------------------
ACT_H, ACT_A, ACT_TOKENS, ACT_D = 7, 3, 4, 5


def act_chunk(memory_sum: float) -> np.ndarray:
    """The normalised chunk the tiny decoder outputs for a given Σ memory: tanh(Σ · pattern), [H, A]."""
    pattern = np.linspace(-0.5, 0.5, ACT_H * ACT_A, dtype=np.float32).reshape(ACT_H, ACT_A)
    return np.tanh(np.float32(memory_sum) * pattern).astype(np.float32)


def build_single_pass_bundle(directory: Path) -> Path:
    """One float32 camera (6×6 CHW with mean/std, resized from any size), state 2 (mean_std), actions 3, horizon 7;
    encoder → memory [tokens, 1, D] (batch axis 1) → single-pass decoder; an auxiliary success detector."""
    enc_nodes = [
        helper.make_node("ReduceMean", ["image"], ["im"], keepdims=0),
        helper.make_node("ReduceSum", ["state"], ["ss"], keepdims=0),
        helper.make_node("Add", ["im", "ss"], ["c"]),
        helper.make_node("Mul", ["c", "ones"], ["memory"]),  # [tokens, 1, D] = c / (tokens·D)
    ]
    encoder = _model(
        enc_nodes,
        [_vi("image", TensorProto.FLOAT, [1, 3, 6, 6]), _vi("state", TensorProto.FLOAT, [1, 2])],
        [_vi("memory", TensorProto.FLOAT, [ACT_TOKENS, 1, ACT_D])],
        [_c("ones", np.full((ACT_TOKENS, 1, ACT_D), 1.0 / (ACT_TOKENS * ACT_D), np.float32))],
    )
    pattern = np.linspace(-0.5, 0.5, ACT_H * ACT_A, dtype=np.float32).reshape(1, ACT_H, ACT_A)
    dec_nodes = [
        helper.make_node("ReduceSum", ["memory"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "pattern"], ["sp"]),
        helper.make_node("Tanh", ["sp"], ["actions"]),
    ]
    decoder = _model(
        dec_nodes, [_vi("memory", TensorProto.FLOAT, [ACT_TOKENS, 1, ACT_D])],
        [_vi("actions", TensorProto.FLOAT, [1, ACT_H, ACT_A])], [_c("pattern", pattern)],
    )
    det_nodes = [
        helper.make_node("ReduceSum", ["memory"], ["s"], keepdims=0),
        helper.make_node("Reshape", ["s", "shape1"], ["s1"]),
        helper.make_node("Sigmoid", ["s1"], ["p_done"]),
    ]
    detector = _model(
        det_nodes, [_vi("memory", TensorProto.FLOAT, [ACT_TOKENS, 1, ACT_D])], [_vi("p_done", TensorProto.FLOAT, [1])],
        [_c("shape1", np.array([1], np.int64))],
    )
    manifest = {
        **_base("tiny-act", "act"),
        "observation": {
            "cameras": [{"name": "front", "height": 6, "width": 6, "resize": "resize", "dtype": "float32",
                         "layout": "chw", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}],
            "state": {"names": ["s0", "s1"], "normalisation": {"mode": "mean_std", "mean": [1.0, 1.0], "std": [1.0, 1.0]}},
        },
        "language": {"tokenizer": {"kind": "words", "vocabulary": ["<pad>", "task"]}},
        "action_space": {"names": ["a0", "a1", "a2"], "low": [-10.0, -10.0, -10.0], "high": [10.0, 10.0, 10.0],
                         "max_delta": [5.0, 5.0, 5.0]},
        "action": {"normalisation": {"mode": "mean_std", "mean": [0.0, 1.0, 2.0], "std": [1.0, 2.0, 3.0]},
                   "model_horizon": ACT_H, "execute_length": ACT_H},
        "graphs": {
            "encoder": {"role": "encode", "inputs": [
                {"name": "image", "dtype": "float32", "shape": [1, 3, 6, 6], "source": "observation.image.front"},
                {"name": "state", "dtype": "float32", "shape": [1, 2], "source": "observation.state"}],
                "outputs": [{"name": "memory", "dtype": "float32", "shape": [ACT_TOKENS, 1, ACT_D], "batch_axis": 1}]},
            "decoder": {"role": "step", "inputs": [
                {"name": "memory", "dtype": "float32", "shape": [ACT_TOKENS, 1, ACT_D], "batch_axis": 1,
                 "source": "encoder.memory"}],
                "outputs": [{"name": "actions", "dtype": "float32", "shape": [1, ACT_H, ACT_A]}]},
            "success": {"role": "auxiliary", "purpose": "success_detector", "inputs": [
                {"name": "memory", "dtype": "float32", "shape": [ACT_TOKENS, 1, ACT_D], "batch_axis": 1,
                 "source": "encoder.memory"}],
                "outputs": [{"name": "p_done", "dtype": "float32", "shape": [1]}]},
        },
        "sampler": {"kind": "single_pass", "output": "decoder.actions"},
        "step_end": {"success": {"graph": "success", "output": "p_done", "threshold": 0.6}, "max_chunks": 5},
        "variants": _variants(["encoder", "decoder", "success"]),
    }
    assemble_bundle(directory, manifest, {"fp32/encoder.onnx": encoder, "fp32/decoder.onnx": decoder,
                                          "fp32/success.onnx": detector})
    return directory


def build_chained_external_bundle(directory: Path) -> Path:
    """π0-like piece-by-piece layout on the single-pass bundle: the encoder split into two encode graphs run in
    order (the second reads the first's output), the second with its weights in an external-data file."""
    import tempfile

    from onnx import external_data_helper

    first = _model(
        [helper.make_node("ReduceMean", ["image"], ["im"], keepdims=0),
         helper.make_node("ReduceSum", ["state"], ["ss"], keepdims=0),
         helper.make_node("Add", ["im", "ss"], ["c"]),
         helper.make_node("Reshape", ["c", "shape1"], ["hidden"])],
        [_vi("image", TensorProto.FLOAT, [1, 3, 6, 6]), _vi("state", TensorProto.FLOAT, [1, 2])],
        [_vi("hidden", TensorProto.FLOAT, [1])],
        [_c("shape1", np.array([1], np.int64))],
    )
    weights = np.full((ACT_TOKENS, 1, ACT_D), 1.0 / (ACT_TOKENS * ACT_D), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["hidden", "ones"], ["memory"])], "g",
        [_vi("hidden", TensorProto.FLOAT, [1])], [_vi("memory", TensorProto.FLOAT, [ACT_TOKENS, 1, ACT_D])],
        initializer=[_c("ones", weights)],
    )
    second = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    second.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        external_data_helper.convert_model_to_external_data(second, location="layers.onnx.data", size_threshold=0)
        onnx.save_model(second, f"{tmp}/layers.onnx")
        second_bytes = Path(f"{tmp}/layers.onnx").read_bytes()
        data_bytes = Path(f"{tmp}/layers.onnx.data").read_bytes()
    build_single_pass_bundle(directory)
    import json

    manifest = json.loads((directory / "manifest.json").read_text())
    graphs = manifest["graphs"]
    encoder = graphs.pop("encoder")
    decoder, success = graphs.pop("decoder"), graphs.pop("success")
    graphs["vision"] = {"role": "encode", "inputs": encoder["inputs"],
                        "outputs": [{"name": "hidden", "dtype": "float32", "shape": [1]}]}
    graphs["layers"] = {"role": "encode", "inputs": [{"name": "hidden", "dtype": "float32", "shape": [1],
                                                      "source": "vision.hidden"}],
                        "outputs": encoder["outputs"]}
    for g in (decoder, success):
        g["inputs"][0]["source"] = "layers.memory"
    graphs["decoder"], graphs["success"] = decoder, success
    manifest["variants"]["fp32"]["graphs"] = {
        "vision": {"file": "fp32/vision.onnx"},
        "layers": {"file": "fp32/layers.onnx", "external_data": ["layers.onnx.data"]},
        "decoder": {"file": "fp32/decoder.onnx"}, "success": {"file": "fp32/success.onnx"}}
    files = {rel: (directory / rel).read_bytes() for rel in ("fp32/decoder.onnx", "fp32/success.onnx")}
    files.update({"fp32/vision.onnx": first, "fp32/layers.onnx": second_bytes, "fp32/layers.onnx.data": data_bytes})
    for rel in list(manifest["files"]):
        (directory / rel).unlink()
    del manifest["files"]
    assemble_bundle(directory, manifest, files)
    return directory
