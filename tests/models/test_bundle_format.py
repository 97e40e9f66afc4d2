"""The committed reference bundle loads and validates; damaged bundles are refused with the file named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vla_edge.bundle import (
    GRAPH_NAMES,
    MANIFEST_FILE,
    PRECISIONS,
    SIGNATURE_FILE,
    BundleManifest,
    load_bundle,
    read_manifest,
)
from vla_edge.errors import BundleError
from vla_edge.paths import REFERENCE_BUNDLE_DIR


@pytest.fixture(scope="module")
def manifest_data() -> dict:
    return json.loads((REFERENCE_BUNDLE_DIR / MANIFEST_FILE).read_text())


@pytest.fixture()
def bundle_copy(tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(REFERENCE_BUNDLE_DIR, target)
    return target


def test_committed_bundle_loads_and_validates():
    bundle = load_bundle(REFERENCE_BUNDLE_DIR)
    m = bundle.manifest
    assert m.schema_version == 1
    assert (m.horizon, m.action_dim, m.state_dim, m.denoising_steps) == (8, 4, 3, 8)
    assert m.control_rate_hz == 10.0
    assert set(bundle.precisions) == set(PRECISIONS)
    for precision in PRECISIONS:
        for graph in GRAPH_NAMES:
            assert bundle.graph_path(precision, graph).is_file()
        parity = m.variants[precision].parity
        assert parity is not None and parity.passed
        assert parity.closed_loop_steps >= 200
    assert m.embedding_stats.dim == m.embedding_dim
    assert len(m.embedding_stats.precision) == m.embedding_dim
    assert "put" in m.vocabulary and m.vocabulary[0] == "<pad>"
    # a few MB in the repository, all variants together
    assert sum(entry.size_bytes for entry in m.files.values()) < 8_000_000


def test_fp32_closed_loop_success_is_in_the_target_band():
    parity = load_bundle(REFERENCE_BUNDLE_DIR).manifest.variants["fp32"].parity
    assert parity is not None
    assert 0.85 <= parity.per_step_success <= 0.98


def test_corrupted_byte_is_refused_naming_the_file(bundle_copy: Path):
    target = bundle_copy / "int8" / "denoiser.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"int8/denoiser\.onnx is corrupted"):
        load_bundle(bundle_copy)


def test_truncated_file_is_refused_naming_the_file(bundle_copy: Path):
    target = bundle_copy / "fp32" / "observation_encoder.onnx"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"fp32/observation_encoder\.onnx is corrupted \(size"):
        load_bundle(bundle_copy)


def test_missing_graph_is_refused_naming_the_file(bundle_copy: Path):
    (bundle_copy / "int4" / "instruction_encoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"int4/instruction_encoder\.onnx is listed in the manifest but missing"):
        load_bundle(bundle_copy)


def test_unexpected_file_is_refused_naming_it(bundle_copy: Path):
    (bundle_copy / "fp32" / "extra.onnx").write_bytes(b"not a graph")
    with pytest.raises(BundleError, match=r"unexpected file\(s\).*fp32/extra\.onnx"):
        load_bundle(bundle_copy)


def test_signature_file_is_not_an_unexpected_file(bundle_copy: Path):
    (bundle_copy / SIGNATURE_FILE).write_text("{}")
    assert load_bundle(bundle_copy).manifest.name == "reference"


def test_missing_manifest_and_bad_json_are_clear(tmp_path: Path, bundle_copy: Path):
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_bundle(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="manifest not found"):
        load_bundle(empty)
    (bundle_copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_unknown_variant_or_graph_is_clear():
    bundle = load_bundle(REFERENCE_BUNDLE_DIR)
    with pytest.raises(BundleError, match="no 'fp16' variant"):
        bundle.graph_path("fp16", "denoiser")
    with pytest.raises(BundleError, match="no graph 'decoder'"):
        bundle.graph_path("fp32", "decoder")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("schema_version",), 3, "schema_version 3 is not supported"),
        (("horizon",), 0, "horizon"),
        (("control_rate_hz",), -10.0, "control_rate_hz"),
        (("action_space", "low"), [0.0, 0.0, 2.0, 0.0], "low must be below"),
        (("action_space", "max_delta"), [0.08, 0.08, 1.0], "max_delta has 3 values"),
        (("normalisation", "state_std"), [1.0, 0.0, 1.0], "std values must be positive"),
        (("embedding_stats", "mean"), [0.0], "mean/std must have"),
        (("files", "fp32/denoiser.onnx", "sha256"), "abc", "sha256"),
        (("surprise",), 1, "surprise"),
    ],
)
def test_manifest_schema_rejects_bad_values(manifest_data: dict, tmp_path: Path, path, value, message):
    data = json.loads(json.dumps(manifest_data))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    target = tmp_path / MANIFEST_FILE
    target.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        read_manifest(target)


def test_manifest_requires_fp32_and_listed_graph_files(manifest_data: dict):
    data = json.loads(json.dumps(manifest_data))
    del data["variants"]["fp32"]
    with pytest.raises(ValueError, match="fp32 variant"):
        BundleManifest.model_validate(data)
    data = json.loads(json.dumps(manifest_data))
    del data["files"]["int8/denoiser.onnx"]
    with pytest.raises(ValueError, match=r"int8/denoiser\.onnx.*not listed"):
        BundleManifest.model_validate(data)
    data = json.loads(json.dumps(manifest_data))
    data["files"]["../outside.onnx"] = data["files"]["fp32/denoiser.onnx"]
    with pytest.raises(ValueError, match="inside the bundle"):
        BundleManifest.model_validate(data)


def test_file_digests_cover_every_file_and_the_manifest():
    bundle = load_bundle(REFERENCE_BUNDLE_DIR)
    digests = bundle.file_digests()
    assert MANIFEST_FILE in digests
    assert set(digests) - {MANIFEST_FILE} == set(bundle.manifest.files)
