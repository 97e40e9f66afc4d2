"""Bundle store: signed installs, atomic switches of `current`, rollback, refusal of altered versions."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from vla_edge.bundle_store import BundleStore
from vla_edge.errors import BundleError
from vla_edge.signing import SIGNATURE_FILE, sign_bundle


@pytest.fixture()
def make_version(make_bundle):
    def make(root: Path, version: str, priv: Path | None) -> Path:
        bundle = make_bundle(root / version, name="pick-place", version=version)
        if priv is not None:
            sign_bundle(bundle, priv)
        return bundle

    return make


@pytest.fixture()
def store(tmp_path: Path, keys) -> BundleStore:
    return BundleStore(tmp_path / "bundles", require_signature=True, trusted_keys=[keys[1]])


def test_install_activate_update_and_rollback(tmp_path: Path, keys, store: BundleStore, make_version):
    v1 = store.install(make_version(tmp_path / "src", "1.0.0", keys[0]))
    assert v1.name.startswith("pick-place-1.0.0-") and len(v1.name.rsplit("-", 1)[1]) == 12
    current = store.root / "current"
    assert current.is_symlink() and not os.readlink(current).startswith("/")  # relative: the store can move
    assert current.resolve() == v1.resolve()
    assert (current / "manifest.json").is_file() and (current / SIGNATURE_FILE).is_file()
    assert store.previous() is None
    with pytest.raises(BundleError, match="nothing to roll back to"):
        store.rollback()

    v2 = store.install(make_version(tmp_path / "src", "2.0.0", keys[0]))
    assert store.current() == v2 and store.previous() == v1
    assert json.loads((current / "manifest.json").read_text())["version"] == "2.0.0"

    assert store.rollback() == v1
    assert store.current() == v1 and store.previous() == v2
    assert store.rollback() == v2  # rollback of a rollback goes forward again

    listed = {v.name: v for v in store.list()}
    assert set(listed) == {v1.name, v2.name}
    assert listed[v2.name].is_current and listed[v1.name].is_previous and listed[v1.name].signed


def test_same_content_installs_once(tmp_path: Path, keys, store: BundleStore, make_version):
    src = make_version(tmp_path / "src", "1.0.0", keys[0])
    assert store.install(src) == store.install(src)
    assert len(store.list()) == 1


def test_unsigned_and_tampered_sources_are_refused_and_leave_nothing(tmp_path: Path, keys, store: BundleStore, make_version):
    with pytest.raises(BundleError, match="not signed"):
        store.install(make_version(tmp_path / "a", "1.0.0", None))
    tampered = make_version(tmp_path / "b", "1.0.0", keys[0])
    (tampered / "int8" / "denoiser.onnx").write_bytes(b"evil")
    with pytest.raises(BundleError, match="int8/denoiser.onnx does not match"):
        store.install(tampered)
    assert store.list() == [] and store.current() is None
    assert [p.name for p in store.versions_dir.iterdir()] == []  # no half-copied directory left behind


def test_version_altered_on_disk_is_not_activated(tmp_path: Path, keys, store: BundleStore, make_version):
    v1 = store.install(make_version(tmp_path / "src", "1.0.0", keys[0]))
    v2 = store.install(make_version(tmp_path / "src", "2.0.0", keys[0]))
    (v1 / "fp32" / "denoiser.onnx").write_bytes(b"altered after install")
    with pytest.raises(BundleError, match="fp32/denoiser.onnx does not match"):
        store.rollback()
    assert store.current() == v2  # the refused switch left current alone


def test_unsigned_allowed_when_not_required(tmp_path: Path, make_version):
    store = BundleStore(tmp_path / "bundles", require_signature=False)
    v = store.install(make_version(tmp_path / "src", "0.1", None))
    assert store.current() == v and not store.list()[0].signed


def test_required_without_keys_is_a_clear_error(tmp_path: Path):
    with pytest.raises(BundleError, match="no trusted public keys"):
        BundleStore(tmp_path / "b", require_signature=True, trusted_keys=[])


def test_validator_failure_installs_nothing(tmp_path: Path, keys, make_version):
    def refuse(path: Path) -> None:
        raise BundleError(f"bundle manifest {path}/manifest.json is invalid: horizon missing")

    store = BundleStore(tmp_path / "bundles", trusted_keys=[keys[1]], validate=refuse)
    with pytest.raises(BundleError, match="horizon missing"):
        store.install(make_version(tmp_path / "src", "1.0.0", keys[0]))
    assert store.list() == []


def test_bad_sources_are_named(tmp_path: Path, store: BundleStore):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        store.install(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        store.install(tmp_path)
    with pytest.raises(BundleError, match="no installed version 'nope'"):
        store.activate("nope")


def test_reader_never_sees_a_missing_or_mixed_current(tmp_path: Path, keys, store: BundleStore, make_version):
    """While versions switch back and forth, `current` always resolves to one complete version."""
    v1 = store.install(make_version(tmp_path / "src", "1.0.0", keys[0]))
    v2 = store.install(make_version(tmp_path / "src", "2.0.0", keys[0]))
    unsigned_store = BundleStore(store.root, require_signature=False)  # switch fast: no re-hash per switch
    stop = threading.Event()
    seen: list[str] = []
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(json.loads((store.root / "current" / "manifest.json").read_text())["version"])
            except (OSError, ValueError) as exc:
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            unsigned_store.activate((v1 if i % 2 else v2).name)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert set(seen) <= {"1.0.0", "2.0.0"} and len(seen) > 0


def test_file_system_errors_are_bundle_errors(tmp_path: Path, keys, make_version):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = BundleStore(blocker / "bundles", trusted_keys=[keys[1]])
    with pytest.raises(BundleError, match="cannot use the bundle store"):
        store.install(make_version(tmp_path / "src", "1.0.0", keys[0]))
    store = BundleStore(tmp_path / "ok", trusted_keys=[keys[1]])
    src = make_version(tmp_path / "src2", "1.0.0", keys[0])
    (store.root / "versions").mkdir(parents=True)
    (store.root / "current").mkdir()  # a directory where the link must go: the rename fails
    with pytest.raises(BundleError, match="nothing was switched"):
        store.install(src)
