"""Export one torch module to ONNX, apply the graph fixes it needs, and make its int8 and int4 variants.

Every graph is written as ``<name>.onnx`` with its initializers in ``<name>.onnx.data`` (external data), so a
graph's size never meets protobuf's 2 GB limit and a large model is handled one graph at a time.

int8 is ONNX Runtime's dynamic quantization (weights int8 per channel, activations quantized on the fly). Which
op types to quantize is chosen per graph by measurement (``choose_int8``): full dynamic int8 can be slower than
fp32 (ConvInteger on CPU; e.g. Diffusion Policy's UNet: 115 ms full vs 64 ms MatMul/Gemm-only vs 69 ms fp32), so
each candidate set is timed on the graph's example inputs and the fastest is kept; the timings go in the manifest.
int4 is ``MatMulNBits`` (4-bit blocks of 32 along K, asymmetric, accuracy_level 4 = int8 compute), Gemm rewritten
as MatMul first, narrow MatMuls (< 64 in or out) kept fp32, as the reference model's int4 does; embedding Gathers
become ``GatherBlockQuantized`` (4-bit blocks along the width). Gathers are int8 in the int8 variant.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 18
INT4_BLOCK_SIZE = 32
INT4_MIN_WIDTH = 64
# Gather (embedding tables: π0's 257k × 2048 language embedding is 2.1 GB in fp32) is quantized in every candidate:
# it changes the size, not the speed.
INT8_CANDIDATES: dict[str, tuple[str, ...]] = {
    "matmul": ("MatMul", "Gather"),
    "matmul+gemm": ("MatMul", "Gemm", "Gather"),
    "matmul+gemm+conv": ("MatMul", "Gemm", "Conv", "Gather"),
}


@dataclass
class ExportReport:
    """What was done to one graph, for the manifest and the closing note."""

    graph: str
    exporter: str
    fixes: list[str] = field(default_factory=list)
    max_abs_error: float | None = None  # ORT fp32 vs the torch module on the example inputs
    int8_timings_ms: dict[str, float] = field(default_factory=dict)
    int8_choice: str = ""
    int4_quantized: int = 0
    int8_quantized: int = 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters and quantizers log every node at INFO and warn about tracing; keep the import output readable."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    loggers = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export", "onnx_ir", "torch._dynamo")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(previous)
        for lg, level in saved:
            lg.setLevel(level)


def save_with_external_data(model: onnx.ModelProto, path: Path) -> None:
    """``path`` + ``path.name + '.data'`` beside it (every initializer above 1 KiB goes to the data file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    for stale in (path, data):
        if stale.exists():
            stale.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=1024, convert_attribute=False)
    if not data.exists():  # a graph with no large initializer: keep the pair anyway, so every graph has one layout
        data.write_bytes(b"")
    for written in (path, data):
        written.chmod(0o644)  # onnx writes the data file through a private temporary file (mode 0600)


def external_files(path: Path) -> list[str]:
    """The external data file names a saved graph refers to (relative to its folder)."""
    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                names.add(entry.value)
    return sorted(names)


def export_module(module: Any, args: tuple, path: Path, input_names: Sequence[str], output_names: Sequence[str],
                  dynamic_axes: dict[str, dict[int, str]], exporter: str) -> None:
    """torch → ONNX (fp32) with external data. ``exporter``: "dynamo" (torch.export) or "legacy" (TorchScript)."""
    import torch

    tmp = path.with_name(path.stem + ".raw.onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet(), torch.no_grad():
        if exporter == "dynamo":
            dims: dict[str, dict[int, Any]] = {}
            for name, axes in dynamic_axes.items():
                dims[name] = {axis: torch.export.Dim.DYNAMIC for axis in axes}
            shapes: Any = _signature_shapes(module, [dims.get(name) for name in input_names]) if dims else None
            program = torch.onnx.export(module, args, input_names=list(input_names), output_names=list(output_names),
                                        dynamic_shapes=shapes, dynamo=True, opset_version=OPSET,
                                        external_data=True)
            # straight to <name>.onnx + <name>.onnx.data: the initializers stream from the torch tensors to disk,
            # never held twice (π0's embed graph alone is 3.7 GB)
            for stale in (path, path.with_name(path.name + ".data")):
                if stale.exists():
                    stale.unlink()
            program.save(str(path), external_data=True)
            del program
            for written in (path, path.with_name(path.name + ".data")):
                if not written.exists():
                    written.write_bytes(b"")
                written.chmod(0o644)
            return
        elif exporter == "legacy":
            torch.onnx.export(module, args, str(tmp), input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, dynamo=False, opset_version=OPSET, do_constant_folding=True)
        else:
            raise ValueError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    model = onnx.load(str(tmp), load_external_data=True)
    save_with_external_data(model, path)
    for leftover in tmp.parent.glob(tmp.name + "*"):
        leftover.unlink()


def _signature_shapes(module: Any, flat: list[Any]) -> tuple:
    """Dynamic shapes laid out as forward's signature: one entry per positional parameter, and one tuple for
    ``*args`` (torch.export matches the structure of the inputs, not the flat list)."""
    import inspect

    out: list[Any] = []
    rest = list(flat)
    for param in inspect.signature(module.forward).parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            out.append(tuple(rest))
            rest = []
        elif rest:
            out.append(rest.pop(0))
    return tuple(out)


# ---- graph fixes ----------------------------------------------------------------------------------------------
def cast_bool_cumsum(model: onnx.ModelProto) -> int:
    """ONNX Runtime has no CumSum kernel for bool: cast such inputs to int64 first (LeRobot computes position ids
    as ``torch.cumsum(pad_masks, dim=1)`` on bool masks; torch promotes to int64, the exported graph does not)."""
    types = _value_types(model)
    fixed = 0
    nodes = []
    for node in model.graph.node:
        if node.op_type == "CumSum" and types.get(node.input[0]) == TensorProto.BOOL:
            cast_out = f"{node.input[0]}__as_int64_{fixed}"
            nodes.append(helper.make_node("Cast", [node.input[0]], [cast_out], to=TensorProto.INT64,
                                          name=f"{node.name or 'cumsum'}__cast_bool_{fixed}"))
            node.input[0] = cast_out
            fixed += 1
        nodes.append(node)
    if fixed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return fixed


# Ops whose float64 kernel is missing from ONNX Runtime's CPU provider in releases a board still installs (1.23.2,
# the newest for Python 3.10 / JetPack 6: "Could not find an implementation for Cos(7)"). LeRobot's SmolVLA and π0
# compute the flow-time sinusoidal embedding in float64, so their expert graphs carry a double Cos.
DOUBLE_UNSUPPORTED = ("Cos", "Sin")


def float_trig(model: onnx.ModelProto) -> int:
    """Compute float64 Sin/Cos in float32 (Cast in, Cast back to float64), so every ONNX Runtime a board installs can
    run the graph. The argument is a time embedding of at most a few thousand radians: float32 changes it by ~1e-4,
    which the parity check against torch measures."""
    types = _value_types(model)
    fixed = 0
    nodes = []
    for node in model.graph.node:
        if node.op_type in DOUBLE_UNSUPPORTED and types.get(node.input[0]) == TensorProto.DOUBLE:
            tag = f"{node.name or node.op_type.lower()}__float_{fixed}"
            as_float, out_float = f"{node.input[0]}__{tag}_in", f"{node.output[0]}__{tag}_out"
            nodes.append(helper.make_node("Cast", [node.input[0]], [as_float], to=TensorProto.FLOAT, name=f"{tag}_in"))
            original_out = node.output[0]
            node.input[0], node.output[0] = as_float, out_float
            nodes.append(node)
            nodes.append(helper.make_node("Cast", [out_float], [original_out], to=TensorProto.DOUBLE, name=f"{tag}_out"))
            fixed += 1
        else:
            nodes.append(node)
    if fixed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return fixed


# Fixes every exported graph gets, whatever its plan names: each is a no-op on a graph without the pattern.
ALWAYS = ("float_trig",)


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=False)
    types: dict[str, int] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        types[value.name] = value.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def apply_fixes(path: Path, fixes: Sequence[str]) -> list[str]:
    """Run the named fixes on a saved graph; returns what each changed (for the report)."""
    model = onnx.load(str(path), load_external_data=False)  # the graph only; the weights stay in the data file
    done = []
    changed = 0
    for fix in dict.fromkeys([*fixes, *ALWAYS]):
        if fix == "cast_bool_cumsum":
            count = cast_bool_cumsum(model)
            if count:
                done.append(f"cast_bool_cumsum: {count} CumSum on bool → Cast(int64) first (ORT has no bool CumSum)")
        elif fix == "float_trig":
            count = float_trig(model)
            if count:
                done.append(f"float_trig: {count} float64 Sin/Cos computed in float32 (ORT 1.23 has no double Cos)")
        else:
            raise ValueError(f"unknown graph fix {fix!r}")
        changed += count
    if changed:
        onnx.save_model(model, str(path))
    return done


# ---- checking ---------------------------------------------------------------------------------------------------
def session(path: Path, threads: int = 2) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def max_abs_error(path: Path, feeds: dict[str, np.ndarray], expected: Sequence[np.ndarray], threads: int = 2) -> float:
    outputs = session(path, threads).run(None, feeds)
    worst = 0.0
    for got, want in zip(outputs, expected, strict=True):
        if got.dtype == np.bool_:
            worst = max(worst, float(np.mean(got != want)))
        else:
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))))
    return worst


def time_graph(path: Path, feeds: dict[str, np.ndarray], threads: int = 2, repeats: int = 7) -> float:
    """Fastest wall time (ms) of ``repeats`` runs after one warm-up run: on a shared machine the minimum is the
    figure least disturbed by other jobs, which is what a choice between op sets needs."""
    sess = session(path, threads)
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.min(times))


# ---- quantization -----------------------------------------------------------------------------------------------
def _count(path: Path, ops: set[str]) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return sum(node.op_type in ops for node in model.graph.node)


def quantize_int8(src: Path, dst: Path, op_types: Sequence[str]) -> int:
    """Dynamic int8 of ``op_types`` (per-channel weights); returns the number of quantized nodes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".q8tmp.onnx")
    with quiet():
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(op_types), use_external_data_format=True,
                         extra_options={"MatMulConstBOnly": True})
    save_with_external_data(onnx.load(str(tmp), load_external_data=True), dst)
    for leftover in tmp.parent.glob(tmp.stem + "*"):
        leftover.unlink()
    return _count(dst, {"MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger", "DequantizeLinear"})


def choose_int8(src: Path, dst: Path, feeds: dict[str, np.ndarray], threads: int,
                candidates: Sequence[str] | None = None) -> tuple[str, dict[str, float], int]:
    """Quantize with each candidate op set, time each (and fp32), keep the fastest in ``dst``.

    Returns (choice, {candidate or 'fp32': median ms}, quantized node count). When no candidate beats fp32 the
    fastest candidate is still kept (the variant exists), and the timings say so.
    """
    names = list(candidates or INT8_CANDIDATES)
    timings = {"fp32": time_graph(src, feeds, threads)}
    scratch = dst.parent / f".int8-candidates-{dst.stem}"
    results: dict[str, tuple[Path, int]] = {}
    try:
        for name in names:
            out = scratch / name / dst.name
            count = quantize_int8(src, out, INT8_CANDIDATES[name])
            if count == 0 and results:  # nothing of these op types: same graph as an earlier candidate
                continue
            timings[name] = time_graph(out, feeds, threads)
            results[name] = (out, count)
        best = min(results, key=lambda n: timings[n])
        out, count = results[best]
        for suffix in ("", ".data"):
            shutil.copyfile(out.with_name(out.name + suffix) if suffix else out, dst.with_name(dst.name + suffix))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return best, {k: round(v, 3) for k, v in timings.items()}, count


def narrow_matmuls(model: onnx.ModelProto, min_width: int) -> list[str]:
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "MatMul"
            and len(shapes.get(node.input[1], ())) == 2 and min(shapes[node.input[1]]) < min_width]


def quantize_int4(src: Path, dst: Path) -> int:
    """MatMulNBits 4-bit (block 32, asymmetric, accuracy_level 4); Gemm → MatMul + Add first; narrow MatMuls stay
    fp32. Returns the number of MatMulNBits nodes."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from models.reference.export import gemm_to_matmul

    model = onnx.load(str(src), load_external_data=True)
    gemm_to_matmul(model)
    # Gather (embedding tables) → GatherBlockQuantized, 4-bit blocks along the embedding width
    config = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK_SIZE, is_symmetric=False, accuracy_level=4,
                                          op_types_to_quantize=("MatMul", "Gather"),
                                          quant_axes=(("MatMul", 0), ("Gather", 1)))
    with quiet():
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=narrow_matmuls(model, INT4_MIN_WIDTH),
                                         algo_config=config)
        quantizer.process()
    save_with_external_data(quantizer.model.model, dst)
    return _count(dst, {"MatMulNBits", "GatherBlockQuantized"})


def graph_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.exists())


def remove_graph(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
