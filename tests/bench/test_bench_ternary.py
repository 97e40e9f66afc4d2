"""Ternary weights: absmean ternarisation and the exact 2-bit MatMulNBits packing, checked by ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.ternary.build import BLOCK, pack_2bit, runs_2bit, ternarise


def test_ternarise_gives_minus_one_zero_one_and_absmean_scales():
    weight = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    ternary, gamma = ternarise(weight)
    assert set(np.unique(ternary)) <= {-1, 0, 1}
    np.testing.assert_allclose(gamma, np.abs(weight).mean(axis=0), rtol=1e-6)
    # About a third of Gaussian weights fall below gamma/2 and become zero.
    assert 0.2 < float(np.mean(ternary == 0)) < 0.5


def _matmul_2bit(packed: np.ndarray, scales: np.ndarray, k: int, n: int, x: np.ndarray) -> np.ndarray:
    node = helper.make_node(
        "MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=2, block_size=BLOCK,
        accuracy_level=0,  # fp32 compute: the product must match exactly what the weights encode
    )
    graph = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8  # what the bundles use; onnx 1.23's default (14) is too new for ONNX Runtime 1.23
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_2bit_matmulnbits_holds_the_ternary_weights_exactly():
    rng = np.random.default_rng(1)
    k, n = 96, 24
    ternary, gamma = ternarise(rng.standard_normal((k, n)).astype(np.float32))
    x = rng.standard_normal((5, k)).astype(np.float32)
    if not runs_2bit(ort.__version__):
        # Before 1.24 (all that Python 3.10 gets from PyPI) there is no 2-bit kernel: the gate must say so, because
        # the bench's ternary part and the docs rely on it.
        with pytest.raises(Exception, match="Only 4b and 8b"):
            _matmul_2bit(*pack_2bit(ternary, gamma), k, n, x)
        return
    got = _matmul_2bit(*pack_2bit(ternary, gamma), k, n, x)
    np.testing.assert_allclose(got, x @ (ternary * gamma), rtol=1e-4, atol=1e-4)
    # A packing off by one weight would not pass: shift the ternary matrix by one row and compare.
    shifted = np.roll(ternary, 1, axis=0)
    assert np.abs(got - x @ (shifted * gamma)).max() > 0.1


def test_the_2bit_gate_reads_onnxruntime_versions():
    assert not runs_2bit("1.23.2")
    assert runs_2bit("1.24.0") and runs_2bit("1.32.0") and runs_2bit("2.0.0")
    assert not runs_2bit("1.9.0") and runs_2bit("1.24.4+cu126")  # local builds (Jetson wheels) carry a suffix
    assert not runs_2bit("nightly")
