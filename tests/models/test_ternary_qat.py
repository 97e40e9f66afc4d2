"""Ternary QAT: the straight-through forward sees exactly the weights models/ternary/build.py writes, gradients
reach the latent weights, and a quick run ends in a ternary bundle the runtime loads and runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils import parametrize  # noqa: E402

from models.reference.export import GRAPH_FILES, export_fp32  # noqa: E402
from models.reference.net import NetConfig, ReferenceVLA  # noqa: E402
from models.ternary.build import _eligible, runs_2bit, ternarise  # noqa: E402
from models.ternary.qat import (  # noqa: E402
    QatConfig,
    eligible_linears,
    remove_ternarisation,
    run,
    ternarise_model,
)


def _model(seed: int = 0) -> ReferenceVLA:
    torch.manual_seed(seed)
    return ReferenceVLA(NetConfig(vocab_size=12)).eval()


def _batch(cfg: NetConfig, n: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randint(1, cfg.vocab_size, (n, 6), generator=g),
        torch.randint(0, 256, (n, cfg.image_size, cfg.image_size, 3), generator=g, dtype=torch.uint8),
        torch.rand(n, cfg.state_dim, generator=g),
        torch.rand(n, cfg.horizon, cfg.action_dim, generator=g) * 2 - 1,
        torch.rand(n, 2, generator=g) * 2 - 1,
    )


def test_the_qat_layers_are_exactly_the_matmuls_build_ternarises(tmp_path: Path):
    model = _model()
    export_fp32(model, tmp_path)
    from_onnx = {
        f"{graph}.{name.removesuffix('.weight_kn')}"
        for graph, file in GRAPH_FILES.items()
        for name in _eligible(onnx.load(str(tmp_path / file)))
    }
    assert set(eligible_linears(model)) == from_onnx
    assert "observation_encoder.from_state" not in from_onnx  # 3 inputs: stays fp32 in both


def test_ste_forward_uses_build_ternary_values_and_gradients_reach_the_latent_weights():
    model = _model()
    plain = _model()  # the same latent weights, to hold the ternary values without a parametrization
    names = ternarise_model(model)
    assert names and not parametrize.is_parametrized(model.observation_encoder.from_state)
    assert not parametrize.is_parametrized(model.block_head)  # training-only head: never exported
    modules = dict(model.named_modules())
    plain_modules = dict(plain.named_modules())
    for name in names:
        module = modules[name]
        latent = module.parametrizations.weight.original.detach().numpy()
        seen = module.weight.detach().numpy()
        # build.py works on the ONNX (K, N) = transposed weight: its per-column values must be what forward sees
        codes, gamma = ternarise(np.ascontiguousarray(latent.T))
        np.testing.assert_allclose(seen, (codes * gamma).T, rtol=1e-6, atol=1e-8, err_msg=name)
        magnitude = np.abs(seen)  # (N out, K in): every row holds only 0 and its own gamma
        assert np.all((magnitude == 0) | np.isclose(magnitude, gamma[:, None], rtol=1e-6)), name
        assert not np.allclose(seen, latent), name  # really quantized
        with torch.no_grad():
            plain_modules[name].weight.copy_(torch.from_numpy((codes * gamma).T.copy()))

    batch = _batch(model.cfg)
    with torch.no_grad():
        context, _ = model.observation_encoder(batch[1], batch[2], model.instruction_encoder(batch[0]))
        plain_context, _ = plain.observation_encoder(batch[1], batch[2], plain.instruction_encoder(batch[0]))
    torch.testing.assert_close(context, plain_context)  # the forward pass runs on the ternary weights

    model.train()
    flow, block = model.losses(*batch, noise_per_obs=2, generator=torch.Generator().manual_seed(0))
    (flow + block).backward()
    for name in names:
        grad = modules[name].parametrizations.weight.original.grad
        assert grad is not None and float(grad.abs().sum()) > 0, f"no gradient reached {name}'s latent weight"


def test_removing_the_parametrization_keeps_the_latent_weights():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ternarise_model(model)
    with pytest.raises(ValueError, match="already parametrized"):
        ternarise_model(model)
    after = remove_ternarisation(model).state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value)


@pytest.mark.slow
def test_quick_qat_run_writes_a_ternary_bundle_that_runs(tmp_path: Path):
    from bench.torch_reference import load_reference
    from models.reference.train import TrainConfig, TrainResult, save_checkpoint
    from vla_edge.bundle import load_bundle
    from vla_edge.errors import BundleError
    from vla_edge.paths import REFERENCE_BUNDLE_DIR
    from vla_edge.policy import PolicyRunner

    # The committed bundle's own weights as the "trained checkpoint" (models/work/ is not in git).
    reference = load_bundle(REFERENCE_BUNDLE_DIR)
    model = load_reference(reference)
    checkpoint = tmp_path / "checkpoint.pt"
    save_checkpoint(
        TrainResult(
            model=model,
            net_config=model.cfg,
            train_config=TrainConfig(),
            vocabulary=list(reference.manifest.vocabulary),
            normalisation=reference.manifest.normalisation.model_dump(),
        ),
        checkpoint,
    )
    record = run(QatConfig.quick(tmp_path / "qat", checkpoint=checkpoint, bundle=REFERENCE_BUNDLE_DIR), log=False)
    assert record.iterations == 4 and len(record.ternarised) == 19
    # Ternarising costs held-out loss; that is what QAT is for.
    assert record.held_out_loss_post_training_ternary > record.held_out_loss_fp32

    bundle = load_bundle(tmp_path / "qat" / "bundle")
    assert "quantization-aware" in bundle.manifest.description
    int4 = onnx.load(str(bundle.graph_path("int4", "denoiser")))
    bits = {a.i for node in int4.graph.node if node.op_type == "MatMulNBits" for a in node.attribute if a.name == "bits"}
    assert bits == {2}
    image = np.zeros((96, 96, 3), np.uint8)
    state = np.array([0.5, 0.5, 0.0], np.float32)
    space = bundle.manifest.action_space
    precisions = ["int8"]
    if runs_2bit(ort.__version__):
        precisions.append("int4")
    else:  # ONNX Runtime < 1.24 (Python 3.10): the 2-bit variant is refused with ONNX Runtime's reason
        with pytest.raises(BundleError, match="Only 4b and 8b"):
            PolicyRunner(bundle, precision="int4", providers=["CPUExecutionProvider"], intra_op_threads=1)
    for precision in precisions:
        runner = PolicyRunner(bundle, precision=precision, providers=["CPUExecutionProvider"], intra_op_threads=1)
        runner.set_instruction("put the red block in the left bin")
        actions = runner.sample(runner.encode(image, state), 2).actions
        assert actions.shape == (2, bundle.manifest.horizon, bundle.manifest.action_dim)
        assert np.isfinite(actions).all(), precision
        assert (actions >= np.asarray(space.low) - 1e-6).all() and (actions <= np.asarray(space.high) + 1e-6).all()
