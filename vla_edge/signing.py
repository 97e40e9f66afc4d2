"""ed25519 signatures over a bundle's files: who built this bundle, and is every byte still what they built.

``signature.json`` at the bundle root holds ``{v, algorithm, key_id, files: {relative_path: sha256}, signature}``.
The signature covers the canonical encoding of ``files`` (JSON, sorted keys, no whitespace, UTF-8), so the
digest map and the signature travel together and verification needs nothing but the bundle and a public key.
Verification recomputes every digest and refuses extra, missing and changed files, a bad signature and a key
that is not trusted, each with a ``BundleError`` that names the problem and the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vla_edge.bundle import MANIFEST_FILE, Bundle
from vla_edge.bundle_io import BundleDir, FileMissing, load_json_strict
from vla_edge.errors import BundleError

SIGNATURE_FILE = "signature.json"
SIGNATURE_VERSION = 1
PRIVATE_KEY_FILE = "bundle-signing.key"
PUBLIC_KEY_FILE = "bundle-signing.pub"
MAX_SIGNATURE_BYTES = 16 << 20  # 64 bytes of digest per file: far more files than a bundle may have


class SignatureFile(BaseModel):
    """The contents of ``signature.json``."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = SIGNATURE_VERSION
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(description="sha256 of the raw public key, first 16 hex digits.")
    files: dict[str, str] = Field(description="Relative POSIX path → sha256 hex of every file but this one.")
    signature: str = Field(description="base64 ed25519 signature over canonical_files(files).")


@dataclass(frozen=True)
class SignatureInfo:
    """What a successful verification established."""

    key_id: str
    key_path: Path
    file_count: int
    files: dict[str, str]


def canonical_files(files: dict[str, str]) -> bytes:
    """The exact bytes that are signed: sorted-key, whitespace-free JSON of the digest map."""
    return json.dumps(files, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def bundle_files(bundle_dir: Path) -> list[str]:
    """Every regular file in the bundle except ``signature.json``, as sorted relative POSIX paths.

    Symbolic links, special files and names that are not UTF-8 are refused from the directory entries alone,
    before any file is opened: a link could point outside the bundle, to bytes the signature never covered.
    """
    with BundleDir(bundle_dir) as directory:
        return [rel for rel in directory.list_files() if rel != SIGNATURE_FILE]


def digest_bundle(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file but the signature, each read from inside the bundle (no links followed)."""
    with BundleDir(bundle_dir) as directory:
        return {rel: directory.sha256(rel)[0] for rel in directory.list_files() if rel != SIGNATURE_FILE}


def generate_keypair(directory: Path, name: str = "bundle-signing") -> tuple[Path, Path]:
    """Write a new ed25519 key pair as PEM: ``<name>.key`` (mode 0600) and ``<name>.pub``. Never overwrites."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (priv_path, pub_path):
        if path.exists():
            raise BundleError(f"{path} already exists; remove it or choose another directory (keys are never overwritten)")
    private_key = Ed25519PrivateKey.generate()
    priv_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # Created 0600 from the start, so the private key is never readable by others, not even briefly.
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv_pem)
    pub_path.write_bytes(pub_pem)
    return priv_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise BundleError(f"private key not found: {path}") from None
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} is not an ed25519 key (make one with `vla-edge bundle keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise BundleError(f"trusted public key not found: {path}") from None
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path} is not an ed25519 public key")
    return key


def sign_bundle(bundle_dir: Path, private_key_path: Path) -> Path:
    """Digest every file of the bundle and write ``signature.json``; returns its path."""
    bundle_dir = Path(bundle_dir)
    private_key = load_private_key(private_key_path)
    files = digest_bundle(bundle_dir)
    if not files:
        raise BundleError(f"bundle {bundle_dir} has no files to sign")
    signature = private_key.sign(canonical_files(files))
    doc = SignatureFile(key_id=key_id(private_key.public_key()), files=files,
                        signature=base64.b64encode(signature).decode("ascii"))
    out = bundle_dir / SIGNATURE_FILE
    tmp = out.with_name(f".{SIGNATURE_FILE}.tmp")
    tmp.write_text(doc.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def _parse_signature(data: bytes, path: Path) -> SignatureFile:
    value = load_json_strict(data, f"signature file {path}")
    try:
        return SignatureFile.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()[:10])
        raise BundleError(f"{path} is not a valid signature file: {problems}") from None


def _read_signature(directory: BundleDir) -> SignatureFile:
    path = directory.path / SIGNATURE_FILE
    try:
        data = directory.read_bytes(SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
    except FileMissing:
        raise BundleError(f"bundle {directory.path} is not signed: {SIGNATURE_FILE} is missing "
                          "(sign it with `vla-edge bundle sign`, or set policy.require_signature = false)") from None
    return _parse_signature(data, path)


def read_signature(bundle_dir: Path) -> SignatureFile:
    with BundleDir(bundle_dir) as directory:
        return _read_signature(directory)


def _check_signed(doc: SignatureFile, bundle_dir: Path, trusted_public_keys: list[Path]) -> tuple[str, Path]:
    """The signature over ``doc.files`` is by a trusted key: (key id, key path), or BundleError."""
    if not trusted_public_keys:
        raise BundleError("no trusted public keys configured (policy.trusted_keys); cannot verify a signature")
    trusted = {key_id(k): (k, p) for p in trusted_public_keys for k in [load_public_key(p)]}
    if doc.key_id not in trusted:
        raise BundleError(f"bundle {bundle_dir} is signed by key {doc.key_id}, which is not trusted "
                          f"(trusted: {', '.join(sorted(trusted)) or 'none'})")
    public_key, key_path = trusted[doc.key_id]
    try:
        public_key.verify(base64.b64decode(doc.signature, validate=True), canonical_files(doc.files))
    except (InvalidSignature, binascii.Error, ValueError):
        raise BundleError(f"bundle {bundle_dir}: the signature in {SIGNATURE_FILE} does not match its file list "
                          f"(signed by {doc.key_id}); the bundle was altered after signing") from None
    return doc.key_id, Path(key_path)


def verify_bundle(bundle_dir: Path, trusted_public_keys: list[Path]) -> SignatureInfo:
    """Check ``signature.json`` against the trusted keys and every file against its digest. Raises BundleError."""
    with BundleDir(bundle_dir) as directory:
        bundle_dir = directory.path
        if not trusted_public_keys:
            raise BundleError("no trusted public keys configured (policy.trusted_keys); cannot verify a signature")
        doc = _read_signature(directory)
        kid, key_path = _check_signed(doc, bundle_dir, trusted_public_keys)
        present = [rel for rel in directory.list_files() if rel != SIGNATURE_FILE]
        unlisted = sorted(set(present) - set(doc.files))
        if unlisted:
            raise BundleError(f"bundle {bundle_dir}: file {unlisted[0]} is not covered by the signature"
                              + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""))
        for rel, expected in sorted(doc.files.items()):
            if rel not in present:
                raise BundleError(f"bundle {bundle_dir}: signed file {rel} is missing")
            if directory.sha256(rel)[0] != expected:
                raise BundleError(f"bundle {bundle_dir}: file {rel} does not match its signed sha256 "
                                  "(altered or corrupted)")
    return SignatureInfo(key_id=kid, key_path=key_path, file_count=len(doc.files), files=dict(doc.files))


def verify_loaded_bundle(bundle: Bundle, trusted_public_keys: list[Path]) -> SignatureInfo:
    """The daemon's check: the signature is by a trusted key and covers exactly the manifest that was parsed
    (its bytes' digest) and the digests that manifest lists. Reads no graph: each graph is checked against
    those digests as it is read for use (``Bundle.read_verified``), so a signed digest covers the very bytes
    that run. ``bundle`` must come from ``load_bundle(..., verify="structure")`` or stricter (no strays).
    """
    with BundleDir(bundle.path) as directory:
        doc = _read_signature(directory)
    kid, key_path = _check_signed(doc, bundle.path, trusted_public_keys)
    expected = bundle.file_digests()
    if doc.files.get(MANIFEST_FILE) != expected[MANIFEST_FILE]:
        raise BundleError(f"bundle {bundle.path}: {MANIFEST_FILE} does not match its signed sha256 "
                          "(altered or corrupted)")
    for rel in sorted(set(doc.files) | set(expected)):
        if rel not in doc.files:
            raise BundleError(f"bundle {bundle.path}: file {rel} is not covered by the signature")
        if rel not in expected:
            raise BundleError(f"bundle {bundle.path}: signed file {rel} is not listed in the manifest")
        if doc.files[rel] != expected[rel]:
            raise BundleError(f"bundle {bundle.path}: file {rel} does not match its signed sha256 "
                              "(the manifest lists another digest)")
    return SignatureInfo(key_id=kid, key_path=key_path, file_count=len(doc.files), files=dict(doc.files))


def check_policy_signature(bundle_dir: Path, require_signature: bool,
                           trusted_keys: list[Path]) -> SignatureInfo | None:
    """A bundle directory's signature under ``policy.require_signature`` / ``policy.trusted_keys``.

    Required: verify, or raise BundleError. Not required: verify anyway when the bundle is signed and keys are
    configured (a tampered signed bundle is refused even in a permissive setup); otherwise return None.
    """
    bundle_dir = Path(bundle_dir)
    if require_signature:
        return verify_bundle(bundle_dir, trusted_keys)
    if trusted_keys and (bundle_dir / SIGNATURE_FILE).is_file():
        return verify_bundle(bundle_dir, trusted_keys)
    return None


def check_loaded_signature(bundle: Bundle, require_signature: bool,
                           trusted_keys: list[Path]) -> SignatureInfo | None:
    """What the daemon calls once the manifest is loaded: the same rules as ``check_policy_signature``, through
    ``verify_loaded_bundle`` (each graph's digest is then checked over the bytes that are run)."""
    if require_signature or (trusted_keys and (bundle.path / SIGNATURE_FILE).is_file()):
        return verify_loaded_bundle(bundle, trusted_keys)
    return None
