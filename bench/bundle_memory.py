"""Resident memory of loading a graph from verified bytes (what the daemon does) against ONNX Runtime reading it
from its path, for a graph with inline weights and one with external data.

The daemon reads each graph (and its external-data files) once, checks the digest over those bytes and gives ORT
the same bytes (``vla_edge.policy.open_session``; external data through
``SessionOptions.add_external_initializers_from_files_in_memory``). This measures what that costs in resident
memory, each way in a fresh process: after loading, after the first run, and the peak (VmHWM), as ratios of the
weights' size. The real-VLA budget is 1.3x the weights once loaded.

    python -m bench.bundle_memory [--quick]      (needs the `onnx` package of the [train] extra to build graphs)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import BenchConfig, BenchError, part_main, print_table, write_json

BUDGET = 1.3  # resident memory once loaded, as a multiple of the weights (the real-VLA issue's budget)


def _build(work: Path, side: int) -> dict[str, Any]:
    """Two MatMul graphs with a side×side float32 weight: one inline, one with its weight in an external file."""
    try:
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise BenchError("bench part 'bundle_memory' needs the onnx package: pip install 'vla-edge[train]'") from None
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("inline.onnx", "external.onnx", "external.onnx.data"):
        (work / stale).unlink(missing_ok=True)  # onnx appends to an existing external-data file
    weight = np.random.default_rng(0).standard_normal((side, side), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", side])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(work / "inline.onnx"))
    onnx.save_model(model, str(work / "external.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="external.onnx.data", size_threshold=0)
    files = ["inline.onnx", "external.onnx", "external.onnx.data"]
    digests = {}
    for name in files:
        data = (work / name).read_bytes()
        digests[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return {"side": side, "weights_bytes": int(weight.nbytes), "digests": digests}


_CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
import onnxruntime as ort
from bench.common import peak_rss_mb, rss_mb
from vla_edge.bundle_io import BundleDir
from vla_edge.policy import open_session, session_options

work, graph, mode, digests = Path(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
external = ["external.onnx.data"] if graph == "external.onnx" else []
base = rss_mb()
if mode == "path":
    session = ort.InferenceSession(str(work / graph), session_options(1), providers=["CPUExecutionProvider"])
else:
    with BundleDir(work) as directory:
        read = lambda rel: directory.read_verified(rel, digests[rel]["sha256"], digests[rel]["size"])
        session = open_session(read, graph, lambda: session_options(1), ["CPUExecutionProvider"], external)
loaded = rss_mb()
side = session.get_inputs()[0].shape[1]
session.run(None, {"x": np.ones((1, side), np.float32)})
ran = rss_mb()
print(json.dumps({"base_mb": base, "loaded_mb": loaded, "ran_mb": ran, "peak_mb": peak_rss_mb()}))
"""


def _measure(work: Path, graph: str, mode: str, digests: dict[str, Any]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(work), graph, mode, json.dumps(digests)],
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise BenchError(f"bundle_memory worker ({graph}, {mode}) failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(cfg: BenchConfig) -> dict[str, Any]:
    side = 4096 if cfg.quick else 8192  # 64 MiB or 256 MiB of weights
    work = cfg.work / "bundle_memory"
    built = _build(work, side)
    weights_mb = built["weights_bytes"] / 2**20
    rows, results = [], {}
    for graph in ("inline.onnx", "external.onnx"):
        for mode in ("path", "verified bytes"):
            m = _measure(work, graph, "path" if mode == "path" else "bytes", built["digests"])
            ratios = {key: round((m[key] - m["base_mb"]) / weights_mb, 2) for key in ("loaded_mb", "ran_mb", "peak_mb")}
            results[f"{graph}:{mode}"] = {**m, "ratios": ratios}
            rows.append([graph, mode, f"{ratios['loaded_mb']:.2f}x", f"{ratios['ran_mb']:.2f}x", f"{ratios['peak_mb']:.2f}x"])
    print_table(f"resident memory above the interpreter, as a multiple of {weights_mb:.0f} MiB of weights",
                ["graph", "loaded from", "after load", "after first run", "peak"], rows,
                caption=f"budget once loaded: {BUDGET}x")
    targets = {f"{key}: resident after first run <= {BUDGET}x weights": value["ratios"]["ran_mb"] <= BUDGET
               for key, value in results.items() if key.endswith("verified bytes")}
    result = {"weights_mb": weights_mb, "results": results, "targets_met": targets}
    write_json(cfg.out / "bundle_memory.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    return part_main(__name__, __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
