"""Export gives ONNX graphs that compute what the torch modules compute; quantization touches what it claims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402

from models.reference.export import export_fp32  # noqa: E402
from models.reference.net import NetConfig, ReferenceVLA  # noqa: E402
from models.reference.quantize import INT4_MIN_WIDTH, narrow_matmuls, quantize_variant  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[ReferenceVLA, Path]:
    torch.manual_seed(0)
    model = ReferenceVLA(NetConfig(vocab_size=14)).eval()
    out = tmp_path_factory.mktemp("bundle")
    export_fp32(model, out / "fp32")
    return model, out


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_onnx_graphs_match_torch_with_dynamic_batches(exported):
    model, out = exported
    rng = np.random.default_rng(0)
    tokens = np.array([[1, 5, 9, 2, 3]], dtype=np.int64)
    (features,) = _session(out / "fp32" / "instruction_encoder.onnx").run(None, {"tokens": tokens})
    image = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    state = rng.random((3, 3), dtype=np.float32)
    feats = np.repeat(features, 3, axis=0)
    context, embedding = _session(out / "fp32" / "observation_encoder.onnx").run(
        None, {"image": image, "state": state, "instruction_features": feats}
    )
    noisy = rng.standard_normal((5, 8, 4)).astype(np.float32)
    t = rng.random(5, dtype=np.float32)
    ctx = np.repeat(context[:1], 5, axis=0)
    (velocity,) = _session(out / "fp32" / "denoiser.onnx").run(
        None, {"noisy_actions": noisy, "timestep": t, "context": ctx}
    )
    with torch.no_grad():
        f_t = model.instruction_encoder(torch.from_numpy(tokens))
        c_t, e_t = model.observation_encoder(torch.from_numpy(image), torch.from_numpy(state), f_t.repeat(3, 1))
        v_t = model.denoiser(torch.from_numpy(noisy), torch.from_numpy(t), c_t[:1].repeat(5, 1))
    np.testing.assert_allclose(features, f_t.numpy(), atol=1e-5)
    np.testing.assert_allclose(context, c_t.numpy(), atol=1e-4)
    np.testing.assert_allclose(embedding, e_t.numpy(), atol=1e-4)
    np.testing.assert_allclose(velocity, v_t.numpy(), atol=1e-4)
    ops = {n.op_type for n in onnx.load(str(out / "fp32" / "denoiser.onnx")).graph.node}
    assert "Gemm" not in ops  # rewritten to MatMul + Add so int4 can quantize it


@pytest.mark.slow
def test_int8_and_int4_quantize_the_matmuls_they_claim(exported):
    _, out = exported
    int8 = quantize_variant(out / "fp32", out / "int8", "int8")
    int4 = quantize_variant(out / "fp32", out / "int4", "int4")
    by_graph8 = {r.graph: r for r in int8}
    by_graph4 = {r.graph: r for r in int4}
    assert by_graph8["denoiser"].quantized_nodes == 10 and by_graph8["denoiser"].float_matmuls_left == 0
    fp32_denoiser = onnx.load(str(out / "fp32" / "denoiser.onnx"))
    narrow = narrow_matmuls(fp32_denoiser, INT4_MIN_WIDTH)
    assert len(narrow) == 2  # chunk in / chunk out
    assert by_graph4["denoiser"].quantized_nodes == 10 - len(narrow)
    assert by_graph4["denoiser"].float_matmuls_left == len(narrow)
    q4 = onnx.load(str(out / "int4" / "denoiser.onnx"))
    assert sum(n.op_type == "MatMulNBits" for n in q4.graph.node) == 8
    for precision in ("int8", "int4"):
        for graph in ("instruction_encoder", "observation_encoder", "denoiser"):
            path = out / precision / f"{graph}.onnx"
            assert path.stat().st_size < (out / "fp32" / f"{graph}.onnx").stat().st_size
            _session(path)  # loads in ONNX Runtime
