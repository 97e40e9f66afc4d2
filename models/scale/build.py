"""Generate the RANDOM-WEIGHT scale model straight into ONNX graphs, int4 (MatMulNBits) or fp32, piece by piece.

    python -m models.scale.build --size full  --out models/work/scale/full     # ~2.0B parameters, ~1.1 GB int4
    python -m models.scale.build --size small --out /tmp/scale-small --precision fp32

Shape (pi0-like, RANDOM WEIGHTS): a decoder backbone (Gemma-2B-like: RMSNorm, multi-query attention, SwiGLU MLP)
runs once per chunk over the prefix, ordered [instruction tokens | image patches], and returns every layer's
keys and values (``prefill.onnx``); an action expert with the same number of layers attends, layer by layer, to
those keys/values plus its own action tokens, once per denoising step (``denoise_step.onnx``). No rotary
positions, biases or learned norm gains: they cost nothing next to the matmuls and would only add code.

Prefix attention is block-causal (a prefix-LM split in two): instruction tokens attend only to instruction tokens,
image tokens attend to everything. So the instruction's keys/values do not depend on the image and can be cached
once per instruction: ``prefill.onnx`` takes them back as ``past_keys_<l>``/``past_values_<l>`` (length 0 when
there is nothing cached) and then needs only the image patches (``tokens`` of length 0). Its outputs are always
the whole prefix's keys/values, past included, ready for the action expert.

Memory stays bounded: each weight matrix is drawn, quantized with ONNX Runtime's own MatMulNBits block quantizer
(``quantize_matmul_4bits``, symmetric, the same kernel ``MatMulNBitsQuantizer`` calls) and appended to the graph's
external data file before the next one is drawn, so the full build never holds more than one matrix (<=140 MB
fp32). A ``scale_model.json`` beside the graphs records the sizes, byte counts and the RANDOM WEIGHTS label.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from onnxruntime.capi._pybind_state import quantize_matmul_4bits

LABEL = "RANDOM WEIGHTS: a benchmark shape, not a trained model; its outputs are noise"
# 2: prefix ordered [instruction | image], block-causal, instruction keys/values as optional past inputs.
# 3: IR version 8 written explicitly (onnx >= 1.23 defaults to IR 14, which ONNX Runtime 1.23 cannot load).
GRAPH_VERSION = 3
OPSET = 17
# The ONNX IR version of the written files: the one onnx itself used for opset 17 (and the committed bundles
# have). helper.make_model's default follows the installed onnx (IR 14 with onnx 1.23), which ONNX Runtime 1.23.2,
# the newest build for Python 3.10 (JetPack 6), refuses ("Unsupported model IR version: 14, max supported: 11").
IR_VERSION = 8
INLINE_LIMIT = 4096  # bytes: smaller tensors (shape constants, small vectors) stay inside the .onnx file


@dataclass(frozen=True)
class ScaleConfig:
    layers: int
    width: int
    ffn: int
    heads: int
    head_dim: int
    expert_width: int
    expert_ffn: int
    vocab: int
    patches: int
    patch_dim: int
    text_tokens: int
    action_dim: int
    horizon: int
    block_size: int
    accuracy_level: int = 4  # int8 compute inside MatMulNBits (what the reference bundle's int4 uses)
    seed: int = 0

    @property
    def prefix_tokens(self) -> int:
        return self.patches + self.text_tokens

    def backbone_layer_params(self) -> int:
        d, q, kv = self.width, self.heads * self.head_dim, self.head_dim
        return d * q + 2 * d * kv + q * d + 3 * d * self.ffn

    def expert_layer_params(self) -> int:
        d, q, kv = self.expert_width, self.heads * self.head_dim, self.head_dim
        return d * q + 2 * d * kv + q * d + 3 * d * self.expert_ffn

    def parameter_counts(self) -> dict[str, int]:
        backbone = self.layers * self.backbone_layer_params() + self.vocab * self.width + self.patch_dim * self.width
        expert = self.layers * self.expert_layer_params() + 2 * self.action_dim * self.expert_width + self.expert_width
        return {"backbone": backbone, "action_expert": expert, "total": backbone + expert}


SIZES = {
    # ~2.04B: Gemma-2B-like backbone (16 of its 18 layers) + a pi0-like 1024-wide action expert.
    "full": ScaleConfig(
        layers=16, width=2048, ffn=16384, heads=8, head_dim=256, expert_width=1024, expert_ffn=4096, vocab=1024,
        patches=64, patch_dim=588, text_tokens=48, action_dim=32, horizon=50, block_size=64,
    ),
    # The same graph at toy size, for the tests and `vla-edge bench --quick` (seconds to build and run).
    "small": ScaleConfig(
        layers=2, width=256, ffn=1024, heads=4, head_dim=64, expert_width=128, expert_ffn=512, vocab=128,
        patches=16, patch_dim=48, text_tokens=8, action_dim=8, horizon=8, block_size=32,
    ),
}


class _GraphWriter:
    """Nodes and initializers of one graph; big initializers go straight to an external data file."""

    def __init__(self, data_path: Path, cfg: ScaleConfig, quantize: bool, seed_stream: int) -> None:
        self.cfg = cfg
        self.quantize = quantize
        self.data_path = data_path
        self._data: BinaryIO = open(data_path, "wb")  # noqa: SIM115 - closed in finish()
        self._offset = 0
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._names: dict[str, int] = {}
        self._matrix = 0
        self._seed_stream = seed_stream
        self.weight_bytes = 0  # quantized (or fp32) bytes of the big matrices: what a step streams from memory
        self.quantized_params = 0

    def name(self, stem: str) -> str:
        count = self._names.get(stem, 0)
        self._names[stem] = count + 1
        return f"{stem}_{count}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        if len(tensor.raw_data) > INLINE_LIMIT:
            raw = tensor.raw_data
            pad = (-self._offset) % 64  # aligned so ONNX Runtime may map it
            self._data.write(b"\0" * pad)
            self._offset += pad
            self._data.write(raw)
            set_external_data(tensor, location=self.data_path.name, offset=self._offset, length=len(raw))
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            self._offset += len(raw)
        self.initializers.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], stem: str | None = None, domain: str = "", **attrs: object) -> str:
        out = self.name(stem or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", domain=domain, **attrs))
        return out

    def random_matrix(self, k: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.cfg.seed, self._seed_stream, self._matrix])
        self._matrix += 1
        weight = rng.standard_normal((k, n), dtype=np.float32)
        weight *= np.float32(1.0 / math.sqrt(k))  # keeps activations O(1) through the layers
        return weight

    def linear(self, x: str, k: int, n: int, stem: str) -> str:
        weight = self.random_matrix(k, n)
        if not self.quantize:
            self.weight_bytes += weight.nbytes
            return self.node("MatMul", [x, self.const(f"{stem}_w", weight)], stem)
        block = self.cfg.block_size
        k_blocks = (k + block - 1) // block
        packed = np.zeros((n, k_blocks, block // 2), dtype=np.uint8)
        scales = np.zeros((n, k_blocks), dtype=np.float32)
        zero_points = np.zeros((n, (k_blocks + 1) // 2), dtype=np.uint8)
        quantize_matmul_4bits(packed, weight, scales, zero_points, block, n, k, True)
        del weight
        self.weight_bytes += packed.nbytes + scales.nbytes
        self.quantized_params += k * n
        inputs = [x, self.const(f"{stem}_q4", packed), self.const(f"{stem}_scales", scales)]
        return self.node(
            "MatMulNBits", inputs, stem, domain="com.microsoft",
            K=k, N=n, bits=4, block_size=block, accuracy_level=self.cfg.accuracy_level,
        )

    def rms_norm(self, x: str) -> str:
        squared = self.node("Mul", [x, x])
        mean = self.node("ReduceMean", [squared], axes=[-1], keepdims=1)
        eps = self.const("eps", np.array(1e-6, dtype=np.float32))
        root = self.node("Sqrt", [self.node("Add", [mean, eps])])
        return self.node("Div", [x, root], "rms")

    def shape(self, values: list[int]) -> str:
        return self.const("shape", np.array(values, dtype=np.int64))

    def heads(self, x: str, count: int, keys: bool = False) -> str:
        """[1, T, count*hd] → [1, count, T, hd], or [1, count, hd, T] for keys (ready for q @ k)."""
        split = self.node("Reshape", [x, self.shape([1, -1, count, self.cfg.head_dim])])
        return self.node("Transpose", [split], perm=[0, 2, 3, 1] if keys else [0, 2, 1, 3])

    def attend(self, q: str, keys: str, values: str, mask: str | None = None) -> str:
        """Multi-query attention; ``mask`` (additive, [queries, keys]) is the prefix's block-causal mask."""
        scale = self.const("scale", np.array(1.0 / math.sqrt(self.cfg.head_dim), dtype=np.float32))
        scores = self.node("Mul", [self.node("MatMul", [q, keys]), scale])
        if mask is not None:
            scores = self.node("Add", [scores, mask])
        mixed = self.node("MatMul", [self.node("Softmax", [scores], axis=-1), values])
        merged = self.node("Transpose", [mixed], perm=[0, 2, 1, 3])
        return self.node("Reshape", [merged, self.shape([1, -1, self.cfg.heads * self.cfg.head_dim])])

    def mlp(self, x: str, width: int, ffn: int) -> str:
        gate = self.linear(x, width, ffn, "gate")
        up = self.linear(x, width, ffn, "up")
        act = self.node("Mul", [self.node("Mul", [gate, self.node("Sigmoid", [gate])]), up])
        return self.linear(act, ffn, width, "down")

    def finish(self, inputs: list, outputs: list, path: Path, graph_name: str) -> None:
        self._data.close()
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
            producer_name="vla-edge models.scale (RANDOM WEIGHTS)",
        )
        model.ir_version = IR_VERSION
        model.doc_string = LABEL
        onnx.save_model(model, str(path))


def _vi(name: str, shape: list[int | str], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _prefix_mask(g: _GraphWriter, words: str, past_keys: str) -> str:
    """Additive mask [W + P, past + W + P] over the new tokens [instruction (W) | image (P)] and the cached past.

    Allowed: every past key (cached instruction); new instruction keys from every query; new image keys only from
    image queries. So no instruction token ever sees an image token, and its keys/values are image-independent.
    """
    new_len = g.node("Shape", ["prefix_hidden_in"], start=1, end=2)  # [W + P]
    past_len = g.node("Shape", [past_keys], start=3, end=4)  # [C]
    zero = g.const("zero", np.array(0, dtype=np.int64))
    one = g.const("one", np.array(1, dtype=np.int64))
    positions = g.node("Range", [zero, g.node("Squeeze", [new_len]), one])
    is_image = g.node("GreaterOrEqual", [positions, g.node("Squeeze", [words])])
    query_is_image = g.node("Unsqueeze", [is_image, g.const("axis", np.array([1], dtype=np.int64))])
    key_is_text = g.node("Not", [g.node("Unsqueeze", [is_image, g.const("axis", np.array([0], dtype=np.int64))])])
    allowed = g.node("Or", [query_is_image, key_is_text])
    blocked = g.const("blocked", np.array(-1e9, dtype=np.float32))
    new_mask = g.node("Where", [allowed, g.const("open", np.array(0.0, dtype=np.float32)), blocked])
    past_mask = g.node(
        "ConstantOfShape", [g.node("Concat", [new_len, past_len], axis=0)],
        value=numpy_helper.from_array(np.zeros(1, dtype=np.float32)),
    )
    return g.node("Concat", [past_mask, new_mask], "prefix_mask", axis=1)


def _build_prefill(cfg: ScaleConfig, out: Path, quantize: bool) -> _GraphWriter:
    g = _GraphWriter(out / "prefill.onnx.data", cfg, quantize, seed_stream=1)
    d, q_width = cfg.width, cfg.heads * cfg.head_dim
    image = g.node("MatMul", ["patches", g.const("patch_w", g.random_matrix(cfg.patch_dim, d))], "image_tokens")
    embed = g.random_matrix(cfg.vocab, d) * np.float32(math.sqrt(d))
    text = g.node("Gather", [g.const("embed", embed), "tokens"], "text_tokens", axis=0)
    g.nodes.append(helper.make_node("Concat", [text, image], ["prefix_hidden_in"], axis=1))
    h = "prefix_hidden_in"
    mask = _prefix_mask(g, g.node("Shape", ["tokens"], start=1, end=2), "past_keys_0")
    inputs = [_vi("tokens", [1, "words"], TensorProto.INT64), _vi("patches", [1, "patches", cfg.patch_dim])]
    outputs = []
    for layer in range(cfg.layers):
        inputs += [_vi(f"past_keys_{layer}", [1, 1, cfg.head_dim, "past"]),
                   _vi(f"past_values_{layer}", [1, 1, "past", cfg.head_dim])]
        a = g.rms_norm(h)
        q = g.heads(g.linear(a, d, q_width, "q"), cfg.heads)
        new_keys = g.heads(g.linear(a, d, cfg.head_dim, "k"), 1, keys=True)
        new_values = g.heads(g.linear(a, d, cfg.head_dim, "v"), 1)
        g.nodes.append(helper.make_node("Concat", [f"past_keys_{layer}", new_keys], [f"keys_{layer}"], axis=3))
        g.nodes.append(helper.make_node("Concat", [f"past_values_{layer}", new_values], [f"values_{layer}"], axis=2))
        outputs += [_vi(f"keys_{layer}", [1, 1, cfg.head_dim, "prefix"]), _vi(f"values_{layer}", [1, 1, "prefix", cfg.head_dim])]
        attended = g.attend(q, f"keys_{layer}", f"values_{layer}", mask)
        h = g.node("Add", [h, g.linear(attended, q_width, d, "o")], "residual")
        h = g.node("Add", [h, g.mlp(g.rms_norm(h), d, cfg.ffn)], "residual")
    # The final hidden state (new tokens only) is an output too, so no layer's work is pruned as unused.
    g.nodes.append(helper.make_node("Identity", [g.rms_norm(h)], ["prefix_hidden"]))
    outputs.append(_vi("prefix_hidden", [1, "new", d]))
    g.finish(inputs, outputs, out / "prefill.onnx", "scale_prefill")
    return g


def _build_denoise_step(cfg: ScaleConfig, out: Path, quantize: bool) -> _GraphWriter:
    g = _GraphWriter(out / "denoise_step.onnx.data", cfg, quantize, seed_stream=2)
    d, q_width = cfg.expert_width, cfg.heads * cfg.head_dim
    x = g.node("MatMul", ["noisy_actions", g.const("action_in", g.random_matrix(cfg.action_dim, d))], "action_tokens")
    t = g.node("Reshape", ["timestep", g.shape([1, 1, 1])])
    x = g.node("Add", [x, g.node("Mul", [t, g.const("time_w", g.random_matrix(1, d).reshape(1, 1, d))])])
    inputs = [_vi("noisy_actions", [1, "horizon", cfg.action_dim]), _vi("timestep", [1])]
    for layer in range(cfg.layers):
        inputs += [_vi(f"keys_{layer}", [1, 1, cfg.head_dim, "prefix"]), _vi(f"values_{layer}", [1, 1, "prefix", cfg.head_dim])]
        a = g.rms_norm(x)
        q = g.heads(g.linear(a, d, q_width, "q"), cfg.heads)
        own_keys = g.heads(g.linear(a, d, cfg.head_dim, "k"), 1, keys=True)
        own_values = g.heads(g.linear(a, d, cfg.head_dim, "v"), 1)
        keys = g.node("Concat", [f"keys_{layer}", own_keys], axis=3)
        values = g.node("Concat", [f"values_{layer}", own_values], axis=2)
        x = g.node("Add", [x, g.linear(g.attend(q, keys, values), q_width, d, "o")], "residual")
        x = g.node("Add", [x, g.mlp(g.rms_norm(x), d, cfg.expert_ffn)], "residual")
    g.nodes.append(
        helper.make_node("MatMul", [g.rms_norm(x), g.const("action_out", g.random_matrix(d, cfg.action_dim))], ["velocity"])
    )
    g.finish(inputs, [_vi("velocity", [1, "horizon", cfg.action_dim])], out / "denoise_step.onnx", "scale_denoise_step")
    return g


def build(cfg: ScaleConfig, out: Path, precision: str = "int4") -> dict[str, object]:
    """Write prefill.onnx, denoise_step.onnx (+ .data) and scale_model.json into ``out``; returns the json."""
    if precision not in ("int4", "fp32"):
        raise ValueError(f"precision must be int4 or fp32, got {precision!r}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    quantize = precision == "int4"
    prefill = _build_prefill(cfg, out, quantize)
    step = _build_denoise_step(cfg, out, quantize)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.name.startswith(("prefill", "denoise_step"))}
    info: dict[str, object] = {
        "label": LABEL,
        "graph_version": GRAPH_VERSION,
        "precision": precision,
        "config": asdict(cfg),
        "parameters": cfg.parameter_counts(),
        "quantized_parameters": prefill.quantized_params + step.quantized_params,
        "weight_bytes": {"prefill": prefill.weight_bytes, "denoise_step": step.weight_bytes},
        "file_bytes": files,
        "total_file_bytes": sum(files.values()),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (out / "scale_model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.scale.build", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--out", type=Path, default=None, help="default models/work/scale/<size> (git-ignored)")
    parser.add_argument("--precision", choices=("int4", "fp32"), default="int4")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else Path("models/work/scale") / args.size
    info = build(SIZES[args.size], out, args.precision)
    print(json.dumps({k: info[k] for k in ("label", "parameters", "total_file_bytes", "build_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
