"""Signed bundles: every byte of every file is covered; extra, missing, altered files and foreign keys are refused."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path

import pytest

from vla_edge.errors import BundleError
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.signing import SIGNATURE_FILE, generate_keypair, sign_bundle, verify_bundle


def test_keygen_private_key_is_owner_only_and_never_overwritten(tmp_path: Path):
    priv, pub = generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(BundleError, match="already exists"):
        generate_keypair(tmp_path / "k")


def test_signed_bundle_verifies(tmp_path: Path, keys, make_bundle):
    bundle = make_bundle(tmp_path)
    sign_bundle(bundle, keys[0])
    info = verify_bundle(bundle, [keys[1]])
    assert info.file_count == 10
    assert set(info.files) == {p.relative_to(bundle).as_posix() for p in bundle.rglob("*")
                               if p.is_file() and p.name != SIGNATURE_FILE}


def _expect_refusal(bundle: Path, pub: Path, match: str) -> None:
    with pytest.raises(BundleError, match=match):
        verify_bundle(bundle, [pub])


def tamper_cases(bundle: Path, pub: Path) -> int:
    """Flip one byte in every file (signature.json included), then add, remove, replace. Returns the count."""
    count = 0
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        original = path.read_bytes()
        for offset in (0, len(original) // 2, len(original) - 1):
            data = bytearray(original)
            data[offset] ^= 0x01
            path.write_bytes(bytes(data))
            rel = path.relative_to(bundle).as_posix()
            # A flipped byte in signature.json breaks its JSON, its key id, its digest list or its signature:
            # any refusal will do there; for a data file the error must name the file.
            expected = None if path.name == SIGNATURE_FILE else f"file {re.escape(rel)} does not match"
            with pytest.raises(BundleError, match=expected):
                verify_bundle(bundle, [pub])
            count += 1
        path.write_bytes(original)
        verify_bundle(bundle, [pub])  # restored: accepted again, so each refusal was about that byte
    extra = bundle / "int8" / "extra.onnx"
    extra.write_bytes(b"not signed")
    _expect_refusal(bundle, pub, "int8/extra.onnx is not covered")
    extra.unlink()
    count += 1
    victim = bundle / "fp32" / "denoiser.onnx"
    saved = victim.read_bytes()
    victim.unlink()
    _expect_refusal(bundle, pub, "fp32/denoiser.onnx is missing")
    victim.write_bytes(saved)
    count += 1
    sig = bundle / SIGNATURE_FILE
    saved_sig = sig.read_bytes()
    sig.unlink()
    _expect_refusal(bundle, pub, "not signed")
    sig.write_bytes(saved_sig)
    count += 1
    return count


def test_every_byte_flip_add_remove_and_unsigned_are_refused(tmp_path: Path, keys, make_bundle):
    bundle = make_bundle(tmp_path)
    sign_bundle(bundle, keys[0])
    count = tamper_cases(bundle, keys[1])
    files = len([p for p in bundle.rglob("*") if p.is_file()])
    assert count == files * 3 + 3
    print(f"tamper cases refused: {count} ({files} files x 3 byte flips + add + remove + unsigned)")
    verify_bundle(bundle, [keys[1]])


def test_signature_replaced_by_another_key_is_refused(tmp_path: Path, keys, make_bundle):
    bundle = make_bundle(tmp_path)
    sign_bundle(bundle, keys[0])
    other_priv, other_pub = generate_keypair(tmp_path / "other")
    (bundle / "fp32" / "denoiser.onnx").write_bytes(b"malicious graph")
    sign_bundle(bundle, other_priv)  # an attacker re-signs with their own key
    _expect_refusal(bundle, keys[1], "not trusted")
    assert verify_bundle(bundle, [keys[1], other_pub]).key_path == other_pub


def test_digest_list_edited_to_match_tampered_file_is_refused(tmp_path: Path, keys, make_bundle):
    import hashlib

    bundle = make_bundle(tmp_path)
    sign_bundle(bundle, keys[0])
    target = bundle / "int4" / "denoiser.onnx"
    target.write_bytes(b"swapped")
    doc = json.loads((bundle / SIGNATURE_FILE).read_text())
    doc["files"]["int4/denoiser.onnx"] = hashlib.sha256(b"swapped").hexdigest()
    (bundle / SIGNATURE_FILE).write_text(json.dumps(doc))
    _expect_refusal(bundle, keys[1], "does not match its file list")
    doc["signature"] = base64.b64encode(b"\0" * 64).decode()
    (bundle / SIGNATURE_FILE).write_text(json.dumps(doc))
    _expect_refusal(bundle, keys[1], "does not match its file list")


def test_symlink_in_bundle_is_refused(tmp_path: Path, keys, make_bundle):
    bundle = make_bundle(tmp_path)
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"x")
    os.symlink(outside, bundle / "fp32" / "link.onnx")
    with pytest.raises(BundleError, match="symbolic link"):
        sign_bundle(bundle, keys[0])


def test_no_trusted_keys_and_bad_key_files_are_clear(tmp_path: Path, keys, make_bundle):
    bundle = make_bundle(tmp_path)
    sign_bundle(bundle, keys[0])
    with pytest.raises(BundleError, match="no trusted public keys"):
        verify_bundle(bundle, [])
    with pytest.raises(BundleError, match="not found"):
        verify_bundle(bundle, [tmp_path / "nope.pub"])
    with pytest.raises(BundleError, match="not a PEM public key"):
        verify_bundle(bundle, [bundle / "manifest.json"])


@pytest.mark.skipif(not (REFERENCE_BUNDLE_DIR / "manifest.json").exists(), reason="reference bundle not built yet")
def test_reference_bundle_tamper(tmp_path: Path, keys, make_bundle):
    import shutil

    bundle = tmp_path / "reference"
    shutil.copytree(REFERENCE_BUNDLE_DIR, bundle, ignore=shutil.ignore_patterns(SIGNATURE_FILE))
    sign_bundle(bundle, keys[0])
    count = tamper_cases(bundle, keys[1])
    print(f"reference bundle: {count} tamper cases refused")
    assert count >= 3 * 10 + 3


def test_daemon_policy_check_refuses_unless_configured_otherwise(tmp_path: Path, keys, make_bundle):
    from vla_edge.config import load_settings
    from vla_edge.signing import check_policy_signature

    bundle = make_bundle(tmp_path)
    strict = load_settings(policy={"require_signature": True, "trusted_keys": [str(keys[1])]}).policy
    lax = load_settings(policy={"require_signature": False}).policy
    with pytest.raises(BundleError, match="not signed"):
        check_policy_signature(bundle, strict.require_signature, strict.trusted_keys)
    assert check_policy_signature(bundle, lax.require_signature, lax.trusted_keys) is None
    sign_bundle(bundle, keys[0])
    assert check_policy_signature(bundle, strict.require_signature, strict.trusted_keys).file_count == 10
    (bundle / "int4" / "denoiser.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="int4/denoiser.onnx"):
        check_policy_signature(bundle, strict.require_signature, strict.trusted_keys)
    # Signed and keys known: refused even where signatures are optional.
    with pytest.raises(BundleError, match="int4/denoiser.onnx"):
        check_policy_signature(bundle, False, strict.trusted_keys)
    assert check_policy_signature(bundle, False, []) is None
