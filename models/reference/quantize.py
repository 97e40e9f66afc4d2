"""Quantize the fp32 graphs: int8 with ONNX Runtime's dynamic quantization, int4 with MatMulNBits.

int8: weights of MatMul/Gemm/Gather become int8 (per-channel), activations are quantized on the fly; Convs
stay fp32, because dynamic ConvInteger is slower than fp32 Conv in ONNX Runtime on CPU.
int4: MatMul weights become 4-bit blocks (block 32 along K, asymmetric, accuracy_level 4 = int8 compute).
Asymmetric, because symmetric 4-bit blocks cost too much here: on the reference model, closed-loop per-step
success fell from 77.7 % (fp32) to 60.7 % with symmetric blocks and stayed at 76.3 % with asymmetric ones
(300 steps each), for 3 % more bytes.
Convs, the word-embedding Gather, and the narrow MatMuls (fewer than ``INT4_MIN_WIDTH`` input or output
features: the denoiser's action-chunk input and output layers, the state projection) stay fp32. Those are
tiny, and they are where 4-bit error hurts most: measured on the reference model, keeping the denoiser's two
chunk layers in fp32 cut its int4 action error from 0.011 to 0.007 for 55 KB.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

INT4_BLOCK_SIZE = 32
INT4_MIN_WIDTH = 64


@dataclass(frozen=True)
class QuantizationReport:
    """What one graph's quantization actually did (counted in the output graph, not assumed)."""

    graph: str
    quantized_nodes: int
    float_matmuls_left: int
    float_convs_left: int

    def describe(self) -> str:
        return (
            f"{self.graph}: {self.quantized_nodes} quantized nodes, fp32 left: "
            f"{self.float_matmuls_left} MatMul/Gemm, {self.float_convs_left} Conv"
        )


def _count(path: Path, graph: str) -> QuantizationReport:
    model = onnx.load(str(path))
    ops = [node.op_type for node in model.graph.node]
    quantized = sum(
        op in {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits", "ConvInteger", "DynamicQuantizeLinear"}
        for op in ops
    )
    quantized -= ops.count("DynamicQuantizeLinear")  # activation quantizers are helpers, not quantized layers
    return QuantizationReport(
        graph=graph,
        quantized_nodes=quantized,
        float_matmuls_left=sum(op in {"MatMul", "Gemm"} for op in ops),
        float_convs_left=ops.count("Conv"),
    )


def quantize_int8(src: Path, dst: Path) -> QuantizationReport:
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm", "Gather"],
        extra_options={"MatMulConstBOnly": True},
    )
    return _count(dst, src.stem)


def narrow_matmuls(model: onnx.ModelProto, min_width: int) -> list[str]:
    """Names of MatMul nodes whose constant weight has fewer than ``min_width`` rows (K) or columns (N)."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul"
        and len(shapes.get(node.input[1], ())) == 2
        and min(shapes[node.input[1]]) < min_width
    ]


def quantize_int4(src: Path, dst: Path) -> QuantizationReport:
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src))
    config = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK_SIZE, is_symmetric=False, accuracy_level=4)
    quantizer = MatMulNBitsQuantizer(
        model, nodes_to_exclude=narrow_matmuls(model, INT4_MIN_WIDTH), algo_config=config
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return _count(dst, src.stem)


def quantize_variant(fp32_dir: Path, out_dir: Path, precision: str) -> list[QuantizationReport]:
    """Quantize every graph of ``fp32_dir`` into ``out_dir``."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    quantize = {"int8": quantize_int8, "int4": quantize_int4}[precision]
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)  # both quantizers log every node at INFO, and nag about pre-processing
    try:
        return [quantize(src, out_dir / src.name) for src in sorted(fp32_dir.glob("*.onnx"))]
    finally:
        root.setLevel(previous)
