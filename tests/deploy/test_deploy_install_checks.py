"""`vla-edge bundle install` runs the daemon's start-up checks (a child process starts the configured variant:
graph shapes against the manifest, warm-up inference), so a bundle the daemon could not run never becomes
current (issue 16, item 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vla_edge.bundle import MANIFEST_FILE, digest_files
from vla_edge.bundle_check import check_in_child
from vla_edge.bundle_store import BundleStore
from vla_edge.cli import main
from vla_edge.errors import BundleError
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.signing import SIGNATURE_FILE, sign_bundle

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def _denoiser(context_dim: int, reshape_to_one: bool = False) -> bytes:
    """A denoiser-shaped graph (velocity = 0 * noisy_actions + the context's mean): real, loadable ONNX."""
    inputs = [
        helper.make_tensor_value_info("noisy_actions", TensorProto.FLOAT, ["samples", 8, 4]),
        helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["samples"]),
        helper.make_tensor_value_info("context", TensorProto.FLOAT, ["samples", context_dim]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["context"], ["mean"], keepdims=1),  # (samples, 1)
        helper.make_node("Unsqueeze", ["mean", "axis"], ["mean3"]),  # (samples, 1, 1)
        helper.make_node("Mul", ["noisy_actions", "zero"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean3"], ["sum"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("axis", TensorProto.INT64, [1], [2])]
    if reshape_to_one:  # runs at K = 1 only: the shapes it declares are fine, its warm-up at K = 8 is not
        nodes += [  # target shape [1, 8, 4] computed at run time, so no static inference sees it
            helper.make_node("Shape", ["noisy_actions"], ["shape"]),
            helper.make_node("Mul", ["shape", "zero_i"], ["zeros"]),
            helper.make_node("Add", ["zeros", "one"], ["target"]),
            helper.make_node("Reshape", ["sum", "target"], ["velocity"]),
        ]
        inits += [helper.make_tensor("one", TensorProto.INT64, [3], [1, 8, 4]),
                  helper.make_tensor("zero_i", TensorProto.INT64, [], [0])]
    else:
        nodes.append(helper.make_node("Identity", ["sum"], ["velocity"]))
    output = helper.make_tensor_value_info("velocity", TensorProto.FLOAT, ["samples", 8, 4])
    graph = helper.make_graph(nodes, "denoiser", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _rebuilt(tmp_path: Path, denoiser: bytes, priv: Path | None = None) -> Path:
    """The reference bundle with int8's denoiser replaced and the manifest's digests rebuilt (and re-signed):
    every digest and signature is right; only the graph is wrong for this manifest."""
    bundle = tmp_path / "rebuilt"
    shutil.copytree(REFERENCE_BUNDLE_DIR, bundle, ignore=shutil.ignore_patterns(SIGNATURE_FILE))
    (bundle / "int8" / "denoiser.onnx").write_bytes(denoiser)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["files"].update({rel: d.model_dump() for rel, d in digest_files(bundle, ["int8/denoiser.onnx"]).items()})
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    if priv is not None:
        sign_bundle(bundle, priv)
    return bundle


def test_resigned_graph_with_another_context_shape_never_becomes_current(tmp_path: Path, keys, capsys):
    bundle = _rebuilt(tmp_path, _denoiser(context_dim=128), priv=keys[0])
    store = tmp_path / "store"
    code = main(["bundle", "install", str(bundle), "--store", str(store), "--key", str(keys[1])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "input 'context' has shape [samples, 128] in the graph, the manifest says [samples, 256]" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert BundleStore(store, require_signature=False).current() is None
    assert [p.name for p in (store / "versions").iterdir()] == []


def test_graph_that_fails_its_warm_up_fails_the_install_not_the_daemon(tmp_path: Path, capsys):
    bundle = _rebuilt(tmp_path, _denoiser(context_dim=256, reshape_to_one=True))
    store = tmp_path / "store"
    code = main(["bundle", "install", str(bundle), "--store", str(store), "--allow-unsigned"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "the int8 variant would not start" in err and "warm-up" in err, err
    assert BundleStore(store, require_signature=False).current() is None


def test_only_the_checked_variant_is_started_and_all_checks_every_one(tmp_path: Path, capsys):
    """The bad graph is int8's: checking fp32 installs; checking all refuses."""
    bundle = _rebuilt(tmp_path, _denoiser(context_dim=128))
    store = tmp_path / "store"
    common = ["--store", str(store), "--allow-unsigned"]
    assert main(["bundle", "install", str(bundle), *common, "--precision", "all"]) == 2
    assert "int8" in capsys.readouterr().err
    assert main(["bundle", "install", str(bundle), *common, "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "checked fp32: started in" in out and "peak memory" in out


def test_reference_bundle_passes_the_start_check(tmp_path: Path):
    result = check_in_child(REFERENCE_BUNDLE_DIR, "int8")
    assert result.precision == "int8" and "CPUExecutionProvider" in result.providers
    assert result.peak_rss_mb > 0


def test_start_check_that_runs_out_of_time_is_a_bundle_error():
    with pytest.raises(BundleError, match="took longer than"):
        check_in_child(REFERENCE_BUNDLE_DIR, "int8", timeout_s=0.001)
