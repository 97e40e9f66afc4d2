"""Bundles made outside the project, as an attacker or a careless tool would: links out of the bundle, files
swapped after the check, duplicate keys, deep nesting, bytes that are not UTF-8, absurd sizes. Each is refused
with one BundleError naming the problem, before anything outside the bundle is opened (issue 16, item 1)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

import pytest

from vla_edge.bundle import MANIFEST_FILE, MAX_MANIFEST_BYTES, load_bundle, read_manifest
from vla_edge.bundle_store import BundleStore
from vla_edge.config import Settings
from vla_edge.errors import BundleError
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.policy import PolicyRunner
from vla_edge.signing import SIGNATURE_FILE, generate_keypair, sign_bundle


@pytest.fixture()
def bundle_copy(tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(REFERENCE_BUNDLE_DIR, target, ignore=shutil.ignore_patterns(SIGNATURE_FILE))
    return target


def _manifest_text(bundle: Path) -> str:
    return (bundle / MANIFEST_FILE).read_text(encoding="utf-8")


# ---- links: nothing outside the bundle is read ---------------------------------------------------------------
def test_graph_symlinked_to_a_file_outside_is_refused(bundle_copy: Path, tmp_path: Path):
    graph = bundle_copy / "int8" / "denoiser.onnx"
    outside = tmp_path / "outside.onnx"
    shutil.move(graph, outside)  # the same bytes, so the digest matches: only the link is wrong
    graph.symlink_to(outside)
    with pytest.raises(BundleError, match=r"int8/denoiser\.onnx.*symbolic link|symbolic link.*int8/denoiser\.onnx"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(bundle_copy, verify="structure")


def test_manifest_symlinked_outside_is_refused(bundle_copy: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(bundle_copy / MANIFEST_FILE, outside)
    (bundle_copy / MANIFEST_FILE).symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="symbolic link"):
        read_manifest(bundle_copy / MANIFEST_FILE)


def test_symlinked_variant_directory_is_refused_before_anything_behind_it_is_opened(bundle_copy: Path, tmp_path: Path):
    """Behind the link, FIFOs named like the graphs: opening one for reading would block (the test would hang
    and fail on its deadline), so a refusal that returns proves nothing behind the link was opened."""
    outside = tmp_path / "outside-int4"
    outside.mkdir()
    for graph in (bundle_copy / "int4").iterdir():
        os.mkfifo(outside / graph.name)
    shutil.rmtree(bundle_copy / "int4")
    (bundle_copy / "int4").symlink_to(outside, target_is_directory=True)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_bundle(bundle_copy)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():  # a reader is blocked in open(): a writer that opens and closes releases it
        for fifo in outside.iterdir():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        pytest.fail("load_bundle opened a FIFO behind the symlinked variant directory")
    assert isinstance(outcome[0], BundleError) and "symbolic link" in str(outcome[0]), outcome


def test_fifo_in_place_of_a_graph_is_refused_without_blocking(bundle_copy: Path):
    graph = bundle_copy / "fp32" / "denoiser.onnx"
    graph.unlink()
    os.mkfifo(graph)
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(bundle_copy)


# ---- verify what is loaded, once ------------------------------------------------------------------------------
def test_graph_swapped_after_the_check_is_refused_when_loaded(bundle_copy: Path):
    """The runtime reads each graph once, checks the digest over those bytes and gives ORT the same bytes: a graph
    replaced between the bundle check and the session (another process, a link swap) never runs."""
    bundle = load_bundle(bundle_copy, verify="structure")
    # fp32's denoiser has the same inputs and outputs: ORT would load and run it without a word
    (bundle_copy / "int8" / "denoiser.onnx").write_bytes((bundle_copy / "fp32" / "denoiser.onnx").read_bytes())
    with pytest.raises(BundleError, match=r"int8/denoiser\.onnx is corrupted"):
        PolicyRunner(bundle, precision="int8", intra_op_threads=1)


def test_sessions_are_made_from_bytes_not_paths(bundle_copy: Path, monkeypatch):
    import onnxruntime as ort

    seen: list[type] = []
    real = ort.InferenceSession

    def spy(model, *args, **kwargs):
        seen.append(type(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    PolicyRunner(load_bundle(bundle_copy, verify="structure"), precision="int8", intra_op_threads=1)
    assert seen == [bytes, bytes, bytes]


def test_unsigned_start_warns_once_what_it_does_not_protect_against(bundle_copy: Path, caplog):
    """int8 and int4 swapped with their digests swapped run silently without a trusted key: say so, once."""
    from vla_edge.service import open_bundle

    manifest = json.loads(_manifest_text(bundle_copy))
    for graph in ("instruction_encoder", "observation_encoder", "denoiser"):
        a, b = bundle_copy / "int8" / f"{graph}.onnx", bundle_copy / "int4" / f"{graph}.onnx"
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)
        files = manifest["files"]
        files[f"int8/{graph}.onnx"], files[f"int4/{graph}.onnx"] = files[f"int4/{graph}.onnx"], files[f"int8/{graph}.onnx"]
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    settings = Settings(policy={"bundle": str(bundle_copy), "require_signature": False})
    with caplog.at_level(logging.WARNING, logger="vla_edge.service"):
        open_bundle(settings)  # accepted: nothing can tell without a signature
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "not signature-checked" in warnings[0] and "swap" in warnings[0] and "docs/bundle-format.md" in warnings[0]


def test_signed_manifest_must_match_what_was_parsed(bundle_copy: Path, tmp_path: Path):
    from vla_edge.service import open_bundle

    priv, pub = generate_keypair(tmp_path / "keys")
    sign_bundle(bundle_copy, priv)
    settings = Settings(policy={"bundle": str(bundle_copy), "require_signature": True, "trusted_keys": [str(pub)]})
    assert open_bundle(settings).manifest.name == "reference"
    text = _manifest_text(bundle_copy).replace('"reference"', '"referencf"', 1)
    (bundle_copy / MANIFEST_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(BundleError, match="manifest.json does not match its signed sha256"):
        open_bundle(settings)


# ---- strict manifests ------------------------------------------------------------------------------------------
def test_duplicate_keys_are_an_error(bundle_copy: Path):
    text = _manifest_text(bundle_copy)
    assert '"horizon": 8' in text
    (bundle_copy / MANIFEST_FILE).write_text(text.replace('"horizon": 8', '"horizon": 8, "horizon": 16', 1))
    with pytest.raises(BundleError, match="'horizon' twice"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_manifest_is_a_bundle_error(bundle_copy: Path, depth: int):
    (bundle_copy / MANIFEST_FILE).write_text('{"description": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(BundleError, match="nested deeper than"):
        load_bundle(bundle_copy)


def test_manifest_that_is_not_utf8_is_a_bundle_error(bundle_copy: Path):
    data = (bundle_copy / MANIFEST_FILE).read_bytes().replace(b'"reference"', b'"r\xe9f\xff"', 1)
    (bundle_copy / MANIFEST_FILE).write_bytes(data)
    with pytest.raises(BundleError, match="not UTF-8"):
        load_bundle(bundle_copy)


def test_lone_surrogate_in_manifest_is_a_bundle_error(bundle_copy: Path):
    text = _manifest_text(bundle_copy).replace('"description": "', '"description": "\\udcff', 1)
    (bundle_copy / MANIFEST_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(BundleError, match="not valid Unicode"):
        load_bundle(bundle_copy)


def test_oversized_manifest_is_refused_before_it_is_read(bundle_copy: Path):
    manifest = json.loads(_manifest_text(bundle_copy))
    manifest["description"] = "x" * (MAX_MANIFEST_BYTES + 1)
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match="the limit is"):
        load_bundle(bundle_copy)
    manifest["description"] = "x" * 200_000  # under the file cap, over the field's bound
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match="description"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(("field", "value"), [("action_dim", 1_000_000), ("image_height", 1_000_000_000),
                                              ("context_dim", 512)])
def test_absurd_or_inconsistent_sizes_are_refused(bundle_copy: Path, field: str, value: int):
    """1e6 and 1e9 are out of bounds; a context_dim that the declared tensors do not have is inconsistent."""
    manifest = json.loads(_manifest_text(bundle_copy))
    manifest[field] = value
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    expected = f"{field}: Input should be less than or equal" if value > 1000 else "the manifest's sizes make it"
    with pytest.raises(BundleError, match=expected):
        load_bundle(bundle_copy, verify=False)


# ---- file names ------------------------------------------------------------------------------------------------
def test_file_name_that_is_not_utf8_is_refused_by_load_sign_and_install(bundle_copy: Path, tmp_path: Path):
    os.close(os.open(os.fsencode(bundle_copy / "fp32") + b"/caf\xe9.onnx", os.O_WRONLY | os.O_CREAT, 0o644))
    with pytest.raises(BundleError, match="not valid UTF-8"):
        load_bundle(bundle_copy)
    priv, pub = generate_keypair(tmp_path / "keys")
    with pytest.raises(BundleError, match="not valid UTF-8"):
        sign_bundle(bundle_copy, priv)
    store = BundleStore(tmp_path / "store", require_signature=False)
    with pytest.raises(BundleError, match="not valid UTF-8"):
        store.install(bundle_copy)
    assert store.current() is None


def test_listed_file_name_that_is_not_utf8_is_a_bundle_error(bundle_copy: Path):
    manifest = json.loads(_manifest_text(bundle_copy))
    manifest["files"]["fp32/caf\udce9.onnx"] = manifest["files"]["fp32/denoiser.onnx"]
    text = json.dumps(manifest)  # ensure_ascii: the lone surrogate is written as an escape
    (bundle_copy / MANIFEST_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(BundleError, match="not valid Unicode|UTF-8"):
        load_bundle(bundle_copy)


def test_install_refuses_deep_nesting_and_bad_bytes_with_a_bundle_error(bundle_copy: Path, tmp_path: Path):
    store = BundleStore(tmp_path / "store", require_signature=False)
    (bundle_copy / MANIFEST_FILE).write_text('{"name": "x", "version": "1", "d": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(BundleError, match="nested"):
        store.install(bundle_copy)
    (bundle_copy / MANIFEST_FILE).write_bytes(b'{"name": "\xff", "version": "1"}')
    with pytest.raises(BundleError, match="not UTF-8"):
        store.install(bundle_copy)
    assert store.current() is None
