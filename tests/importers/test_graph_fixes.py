"""Graph fixes the importer applies to every exported graph (models/lerobot/onnx_tools.py), on hand-made graphs.

LeRobot's SmolVLA and π0 compute the flow-time embedding in float64; ONNX Runtime 1.23.2 (the newest for Python 3.10,
i.e. JetPack 6) has no float64 Cos kernel, so an unfixed expert graph fails to load on the board."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from models.lerobot import onnx_tools as ot


def _time_embedding_graph() -> onnx.ModelProto:
    """time (float32) → float64 → Mul by a frequency table → [Sin, Cos] → Concat → float32, as LeRobot exports it."""
    freq = helper.make_tensor("freq", TensorProto.DOUBLE, [1, 4], [1.0, 25.0, 400.0, 1570.0])
    nodes = [
        helper.make_node("Cast", ["time"], ["t64"], to=TensorProto.DOUBLE, name="cast_in"),
        helper.make_node("Mul", ["t64", "freq"], ["angle"], name="mul"),
        helper.make_node("Sin", ["angle"], ["sin"], name="node_sin"),
        helper.make_node("Cos", ["angle"], ["cos"], name="node_cos"),
        helper.make_node("Concat", ["sin", "cos"], ["emb64"], axis=1, name="concat"),
        helper.make_node("Cast", ["emb64"], ["emb"], to=TensorProto.FLOAT, name="cast_out"),
    ]
    graph = helper.make_graph(nodes, "time_embedding",
                              [helper.make_tensor_value_info("time", TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [None, 8])], [freq])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)  # ORT 1.23: IR ≤ 11


def _double_trig(model: onnx.ModelProto) -> list[str]:
    types = ot._value_types(model)
    return [n.name for n in model.graph.node
            if n.op_type in ot.DOUBLE_UNSUPPORTED and types.get(n.input[0]) == TensorProto.DOUBLE]


def test_float64_sin_cos_run_in_float32_and_give_the_same_embedding(tmp_path: Path) -> None:
    path = tmp_path / "expert_step.onnx"
    onnx.save_model(_time_embedding_graph(), str(path))
    assert _double_trig(onnx.load(str(path))) == ["node_sin", "node_cos"]

    done = ot.apply_fixes(path, [])  # no fix named by the plan: float_trig runs on every graph
    fixed = onnx.load(str(path))
    onnx.checker.check_model(fixed, full_check=True)
    assert _double_trig(fixed) == []
    assert done and done[0].startswith("float_trig: 2 ")

    time = np.linspace(0.0, 1.0, 11, dtype=np.float32)[:, None]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"time": time})[0]
    angle = time.astype(np.float64) * np.array([[1.0, 25.0, 400.0, 1570.0]])
    want = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)
    assert got.shape == (11, 8)
    assert np.max(np.abs(got - want)) < 1e-3  # float32 at up to 1570 rad: ~1e-4


def test_a_graph_without_the_pattern_is_left_byte_for_byte(tmp_path: Path) -> None:
    model = _time_embedding_graph()
    for node in model.graph.node:  # the same graph computed in float32 throughout needs no fix
        if node.op_type == "Cast":
            node.attribute[0].i = TensorProto.FLOAT
    model.graph.initializer[0].CopyFrom(helper.make_tensor("freq", TensorProto.FLOAT, [1, 4], [1, 25, 400, 1570]))
    path = tmp_path / "g.onnx"
    onnx.save_model(model, str(path))
    before = path.read_bytes()
    assert ot.apply_fixes(path, ["cast_bool_cumsum"]) == []
    assert path.read_bytes() == before
