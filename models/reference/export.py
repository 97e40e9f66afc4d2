"""Export the trained reference VLA to three fp32 ONNX graphs with dynamic batch axes.

The graph names, tensor names and shapes are the contract in docs/architecture.md; ``graph_specs`` returns them
in the manifest's form.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from models.reference.net import NetConfig, ReferenceVLA
from vla_edge.bundle import GraphSpec, TensorSpec

OPSET = 17
GRAPH_FILES = {
    "instruction_encoder": "instruction_encoder.onnx",
    "observation_encoder": "observation_encoder.onnx",
    "denoiser": "denoiser.onnx",
}


def graph_specs(cfg: NetConfig, variant_dir: str) -> dict[str, GraphSpec]:
    h, a, di, c, e = cfg.horizon, cfg.action_dim, cfg.instruction_dim, cfg.context_dim, cfg.embedding_dim
    size = cfg.image_size
    return {
        "instruction_encoder": GraphSpec(
            file=f"{variant_dir}/{GRAPH_FILES['instruction_encoder']}",
            inputs=[TensorSpec(name="tokens", dtype="int64", shape=[1, "words"])],
            outputs=[TensorSpec(name="instruction_features", dtype="float32", shape=[1, di])],
        ),
        "observation_encoder": GraphSpec(
            file=f"{variant_dir}/{GRAPH_FILES['observation_encoder']}",
            inputs=[
                TensorSpec(name="image", dtype="uint8", shape=["batch", size, size, 3]),
                TensorSpec(name="state", dtype="float32", shape=["batch", cfg.state_dim]),
                TensorSpec(name="instruction_features", dtype="float32", shape=["batch", di]),
            ],
            outputs=[
                TensorSpec(name="context", dtype="float32", shape=["batch", c]),
                TensorSpec(name="embedding", dtype="float32", shape=["batch", e]),
            ],
        ),
        "denoiser": GraphSpec(
            file=f"{variant_dir}/{GRAPH_FILES['denoiser']}",
            inputs=[
                TensorSpec(name="noisy_actions", dtype="float32", shape=["samples", h, a]),
                TensorSpec(name="timestep", dtype="float32", shape=["samples"]),
                TensorSpec(name="context", dtype="float32", shape=["samples", c]),
            ],
            outputs=[TensorSpec(name="velocity", dtype="float32", shape=["samples", h, a])],
        ),
    }


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite ``Gemm(x, W, b)`` (constant W) as ``MatMul(x, W^T) + b``; returns how many were rewritten.

    The exporter emits Gemm for 2-D Linear layers, but ONNX Runtime's MatMulNBits quantizer only takes MatMul,
    so without this the int4 variant would quantize nothing.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    rewritten = 0
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in initializers:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        weight_name = f"{node.input[1]}_kn"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), weight_name))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        matmul_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [matmul_out], name=f"{node.name}_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [matmul_out, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return rewritten


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(path))
    gemm_to_matmul(model)
    onnx.checker.check_model(model)
    # Keep graphs self-contained (no external .data files) and free of exporter doc strings.
    model.producer_name = "vla-edge models.reference"
    onnx.save_model(model, str(path), save_as_external_data=False)


def export_fp32(model: ReferenceVLA, out_dir: Path) -> dict[str, Path]:
    """Write the three fp32 graphs into ``out_dir``; returns their paths by graph name."""
    cfg = model.cfg
    model = model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / file for name, file in GRAPH_FILES.items()}
    tokens = torch.tensor([[1, 2, 3]], dtype=torch.int64)
    image = torch.zeros(2, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
    state = torch.zeros(2, cfg.state_dim)
    features = torch.zeros(2, cfg.instruction_dim)
    noisy = torch.zeros(2, cfg.horizon, cfg.action_dim)
    timestep = torch.zeros(2)
    context = torch.zeros(2, cfg.context_dim)
    with torch.no_grad():
        _export(
            model.instruction_encoder,
            (tokens,),
            paths["instruction_encoder"],
            ["tokens"],
            ["instruction_features"],
            {"tokens": {1: "words"}},
        )
        _export(
            model.observation_encoder,
            (image, state, features),
            paths["observation_encoder"],
            ["image", "state", "instruction_features"],
            ["context", "embedding"],
            {name: {0: "batch"} for name in ("image", "state", "instruction_features", "context", "embedding")},
        )
        _export(
            model.denoiser,
            (noisy, timestep, context),
            paths["denoiser"],
            ["noisy_actions", "timestep", "context"],
            ["velocity"],
            {name: {0: "samples"} for name in ("noisy_actions", "timestep", "context", "velocity")},
        )
    return paths
