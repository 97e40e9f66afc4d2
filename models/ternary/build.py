"""A ternary (1.58-bit, BitNet b1.58 style) variant of the reference bundle, on the paths ONNX Runtime offers.

    python -m models.ternary.build --bundle models/bundles/reference --out models/work/ternary/bundle

Every MatMul weight the int4 variant quantizes (input width a multiple of 32) is ternarised by absmean, as in
BitNet b1.58: gamma = mean |W| (per output column here, which costs nothing at run time and keeps columns of
different scale apart), W_t = clip(round(W / gamma), -1, 1), used as W_t * gamma. Post-training only: no
fine-tuning, so the accuracy figures say what ternarising a trained policy costs as is
(models/ternary/qat.py fine-tunes the weights for this very rule first, then calls ``build`` on them).

Two ways to run the same ternary weights, written as a bundle (a copy of the reference with two variants
replaced, so ``PolicyRunner`` loads it unchanged):

* ``int4/`` → **2-bit MatMulNBits** (bits=2, block 32, zero point 2): each weight is stored as W_t + 2 in two
  bits, the block scale is gamma. Exact, 2 bits per weight + scales.
* ``int8/`` → the ternary weights dequantized and passed through the int8 dynamic quantizer: per-channel int8
  represents {-gamma, 0, gamma} exactly, and runs on the fast int8 kernels. 8 bits per weight.

``fp32/`` stays the original (the reference the accuracy is measured against).
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vla_edge.bundle import digest_files, load_bundle, write_manifest

BLOCK = 32
ZERO_POINT = 2  # 2-bit MatMulNBits without explicit zero points: value = (q - 2) * scale
GRAPHS = ("instruction_encoder.onnx", "observation_encoder.onnx", "denoiser.onnx")
# ONNX Runtime runs 2-bit MatMulNBits from 1.24 on; 1.23.2 (the newest wheel for Python 3.10, i.e. JetPack 6)
# refuses bits=2 at session creation ("Only 4b and 8b quantization is supported for MatMulNBits op").
# Measured on x86-64 with PyPI's 1.23.2, 1.24.4, 1.26.0 and 1.32.0 (tests/bench/test_bench_ternary.py checks it).
TWO_BIT_MIN_ONNXRUNTIME = (1, 24)


def runs_2bit(onnxruntime_version: str) -> bool:
    """Whether this ONNX Runtime version runs the ``int4/`` (2-bit MatMulNBits) variant of a ternary bundle."""
    found = re.match(r"(\d+)\.(\d+)", onnxruntime_version)
    return found is not None and (int(found[1]), int(found[2])) >= TWO_BIT_MIN_ONNXRUNTIME


def ternarise(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) fp32 → (W_t int8 in {-1, 0, 1}, gamma (N,) fp32), absmean per output column."""
    gamma = np.maximum(np.abs(weight).mean(axis=0), 1e-8).astype(np.float32)
    return np.clip(np.rint(weight / gamma), -1, 1).astype(np.int8), gamma


def pack_2bit(ternary: np.ndarray, gamma: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits bits=2 layout: (N, K/block, block/4) bytes, four weights per byte, lowest bits first."""
    k, n = ternary.shape
    if k % block:
        raise ValueError(f"K={k} is not a multiple of the block size {block}")
    q = (ternary.T.astype(np.int16) + ZERO_POINT).astype(np.uint8).reshape(n, k // block, block // 4, 4)
    packed = q[..., 0] | (q[..., 1] << 2) | (q[..., 2] << 4) | (q[..., 3] << 6)
    scales = np.repeat(gamma[:, None], k // block, axis=1).astype(np.float32)
    return np.ascontiguousarray(packed.astype(np.uint8)), scales


def _eligible(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    initializers = {init.name: init for init in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if weight.ndim == 2 and weight.shape[0] % BLOCK == 0:
                weights[node.input[1]] = weight
    return weights


def ternary_fp32(src: Path, dst: Path) -> int:
    """Replace eligible MatMul weights by their ternary values (W_t * gamma) in fp32; returns how many."""
    model = onnx.load(str(src))
    weights = _eligible(model)
    for init in model.graph.initializer:
        if init.name in weights:
            ternary, gamma = ternarise(weights[init.name])
            init.CopyFrom(numpy_helper.from_array((ternary * gamma).astype(np.float32), init.name))
    onnx.save_model(model, str(dst))
    return len(weights)


def ternary_int2(src: Path, dst: Path) -> int:
    """Eligible MatMuls become 2-bit MatMulNBits holding exactly W_t + 2 and gamma; returns how many."""
    model = onnx.load(str(src))
    weights = _eligible(model)
    nodes = []
    new_inits = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        weight = weights[node.input[1]]
        k, n = weight.shape
        packed, scales = pack_2bit(*ternarise(weight))
        name = node.input[1]
        new_inits += [numpy_helper.from_array(packed, f"{name}_Q2"), numpy_helper.from_array(scales, f"{name}_scales")]
        nodes.append(
            helper.make_node(
                "MatMulNBits", [node.input[0], f"{name}_Q2", f"{name}_scales"], list(node.output),
                name=f"{node.name}_Q2", domain="com.microsoft", K=k, N=n, bits=2, block_size=BLOCK, accuracy_level=4,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [init for init in model.graph.initializer if init.name not in weights]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save_model(model, str(dst))
    return len(weights)


def build(bundle_dir: Path, out: Path, method: str = "post-training") -> Path:
    """Write the ternary bundle to ``out`` (replaced); returns it. ``method`` says in the manifest where the
    weights come from (models/ternary/qat.py passes its quantization-aware fine-tuning)."""
    from models.reference.quantize import quantize_int8

    source = load_bundle(bundle_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(bundle_dir / "fp32", out / "fp32")
    (out / "int4").mkdir()
    (out / "int8").mkdir()
    counts = {}
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)  # the int8 quantizer logs every node
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for graph in GRAPHS:
                counts[graph] = ternary_int2(out / "fp32" / graph, out / "int4" / graph)
                ternary_fp32(out / "fp32" / graph, Path(tmp) / graph)
                quantize_int8(Path(tmp) / graph, out / "int8" / graph)
    finally:
        root.setLevel(previous)
    manifest = source.manifest
    files = [f"{p}/{g}" for p in ("fp32", "int8", "int4") for g in GRAPHS]
    digests = digest_files(out, files)
    described = ", ".join(f"{g.removesuffix('.onnx')}: {c}" for g, c in counts.items())
    texts = {
        "int4": f"TERNARY absmean (BitNet b1.58 style, per column) in 2-bit MatMulNBits, block {BLOCK}; "
        f"ternarised MatMuls: {described}",
        "int8": f"TERNARY absmean weights through int8 dynamic quantization (exact); ternarised MatMuls: {described}",
    }
    variants = {}
    for precision, spec in manifest.variants.items():
        size = sum(d.size_bytes for rel, d in digests.items() if rel.startswith(f"{precision}/"))
        update = {"size_bytes": size, "parity": None}
        if precision in texts:
            update["quantization"] = texts[precision]
        variants[precision] = spec.model_copy(update=update)
    write_manifest(
        manifest.model_copy(
            update={
                "name": f"{manifest.name}-ternary",
                "description": f"Ternary (1.58-bit) {method} variant of " + manifest.name + ": int4/ = 2-bit "
                "MatMulNBits, int8/ = int8 kernels, both holding the same ternary weights; fp32/ unchanged.",
                "files": digests,
                "variants": variants,
            }
        ),
        out,
    )
    load_bundle(out)  # must validate
    return out


def main(argv: list[str] | None = None) -> int:
    from vla_edge.paths import REFERENCE_BUNDLE_DIR

    parser = argparse.ArgumentParser(prog="python -m models.ternary.build", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE_DIR)
    parser.add_argument("--out", type=Path, default=Path("models/work/ternary/bundle"))
    args = parser.parse_args(argv)
    print(build(args.bundle, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
