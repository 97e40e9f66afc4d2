"""The RANDOM-WEIGHT scale model generator at its small size: real graphs, real ONNX Runtime sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.scale.build import LABEL, SIZES, build
from models.scale.prefix import empty_past


def _run(directory: Path, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    cfg = SIZES["small"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    prefill = ort.InferenceSession(str(directory / "prefill.onnx"), options, providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(directory / "denoise_step.onnx"), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    outputs = prefill.run(None, {
        "patches": rng.standard_normal((1, cfg.patches, cfg.patch_dim), dtype=np.float32),
        "tokens": rng.integers(1, cfg.vocab, size=(1, cfg.text_tokens), dtype=np.int64),
        **empty_past(cfg.layers, cfg.head_dim),
    })
    named = dict(zip([o.name for o in prefill.get_outputs()], outputs, strict=True))
    hidden = named.pop("prefix_hidden")
    velocity = step.run(None, {
        **named,
        "noisy_actions": rng.standard_normal((1, horizon, cfg.action_dim), dtype=np.float32),
        "timestep": np.array([0.25], dtype=np.float32),
    })[0]
    return hidden, velocity


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale")
    return {p: (build(SIZES["small"], root / p, p), root / p)[1] for p in ("int4", "fp32")}


def test_int4_graph_computes_what_the_fp32_graph_does_within_quantization_error(built):
    hidden4, velocity4 = _run(built["int4"], horizon=8)
    hidden32, velocity32 = _run(built["fp32"], horizon=8)
    assert velocity4.shape == velocity32.shape == (1, 8, SIZES["small"].action_dim)
    assert np.all(np.isfinite(velocity4))
    for a, b in ((hidden4, hidden32), (velocity4, velocity32)):
        relative = np.abs(a - b).mean() / np.abs(b).mean()
        assert 0.0 < relative < 0.3, relative  # 4-bit random weights: close, never identical


def test_any_horizon_runs_on_the_same_step_graph(built):
    for horizon in (1, 3, 50):
        assert _run(built["int4"], horizon)[1].shape[1] == horizon


def test_every_big_matmul_is_4bit_and_the_counts_add_up(built):
    info = json.loads((built["int4"] / "scale_model.json").read_text())
    assert info["label"] == LABEL and "RANDOM WEIGHTS" in info["label"]
    nodes = [n for f in ("prefill.onnx", "denoise_step.onnx") for n in onnx.load(str(built["int4"] / f), load_external_data=False).graph.node]
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    cfg = SIZES["small"]
    assert len(nbits) == cfg.layers * 7 * 2  # q, k, v, o, gate, up, down in both the backbone and the expert
    assert all(next(a.i for a in n.attribute if a.name == "bits") == 4 for n in nbits)
    # fp32: every weight initializer, counted in the graph, matches the declared parameter count.
    total = 0
    for f in ("prefill.onnx", "denoise_step.onnx"):
        model = onnx.load(str(built["fp32"] / f))
        total += sum(int(np.prod(i.dims)) for i in model.graph.initializer if len(i.dims) >= 2 and i.dims[-1] > 1)
    assert total == cfg.parameter_counts()["total"]
    assert info["quantized_parameters"] == cfg.layers * (cfg.backbone_layer_params() + cfg.expert_layer_params())


def test_full_size_is_about_two_billion_parameters_and_about_a_gigabyte_in_int4():
    cfg = SIZES["full"]
    total = cfg.parameter_counts()["total"]
    assert 1.9e9 < total < 2.2e9
    int4_bytes = cfg.layers * (cfg.backbone_layer_params() + cfg.expert_layer_params()) * (0.5 + 4 / cfg.block_size)
    assert 1.0e9 < int4_bytes < 1.25e9
