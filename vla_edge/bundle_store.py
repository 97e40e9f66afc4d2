"""Installed bundle versions with atomic activation and rollback.

Layout under the store's root (``/var/lib/vla-edge/bundles`` when installed)::

    versions/<name>-<version>-<digest12>/   one directory per installed bundle, never modified after install
    current  -> versions/...                 what the daemon loads (policy.bundle points here)
    previous -> versions/...                 what ``rollback`` returns to

A switch is one ``rename(2)`` of a freshly made symbolic link over the old one, so a reader (the daemon
starting, a power cut mid-update) sees either the old version or the new one, never a mix. An install copies
into a temporary directory on the same file system, fsyncs, checks the copy's signature (the copy, not the
source, so the bytes checked are the bytes used), then renames the directory into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vla_edge.bundle import MANIFEST_FILE, MAX_MANIFEST_BYTES
from vla_edge.bundle_io import BundleDir, FileMissing, load_json_strict
from vla_edge.errors import BundleError
from vla_edge.signing import SIGNATURE_FILE, SignatureInfo, canonical_files, digest_bundle, verify_bundle

VERSIONS_DIR = "versions"
CURRENT_LINK = "current"
PREVIOUS_LINK = "previous"
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass(frozen=True)
class InstalledVersion:
    name: str
    path: Path
    is_current: bool
    is_previous: bool
    signed: bool


def content_digest(bundle_dir: Path) -> str:
    """One sha256 over every file's digest (signature excluded): equal content, equal digest."""
    return hashlib.sha256(canonical_files(digest_bundle(bundle_dir))).hexdigest()


def _manifest_identity(directory: BundleDir) -> tuple[str, str]:
    path = directory.path / MANIFEST_FILE
    try:
        data = directory.read_bytes(MANIFEST_FILE, MAX_MANIFEST_BYTES)
    except FileMissing:
        raise BundleError(f"{directory.path} is not a bundle: manifest.json is missing") from None
    value = load_json_strict(data, str(path))
    try:
        name, version = str(value["name"]), str(value["version"])
    except (KeyError, TypeError):
        raise BundleError(f"{path} has no name and version") from None
    if not name or not version:
        raise BundleError(f"{path} has an empty name or version")
    return _SAFE.sub("_", name)[:128], _SAFE.sub("_", version)[:64]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_synced(source: BundleDir, rel: str, dst: Path) -> None:
    """Copy one file out of the source bundle (opened inside it, never through a link) and fsync the copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(source.open(rel), "rb") as fin, dst.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


class BundleStore:
    """Installs, activates and rolls back bundle versions under ``root``.

    ``require_signature`` with ``trusted_keys``: refuse a bundle whose signature does not verify, on install
    and again on every activation (a version directory altered on disk is caught before it is switched to).
    ``validate``: an extra check of the copied bundle before it is installed (the CLI passes the bundle
    loader, so a bundle the daemon could not load never becomes ``current``).
    """

    def __init__(self, root: Path, *, require_signature: bool = True, trusted_keys: list[Path] | None = None,
                 validate: Callable[[Path], object] | None = None) -> None:
        self.root = Path(root)
        self.require_signature = require_signature
        self.trusted_keys = list(trusted_keys or [])
        self._validate = validate
        if require_signature and not self.trusted_keys:
            raise BundleError("signatures are required but no trusted public keys are configured "
                              "(policy.trusted_keys, or --key); or turn the requirement off")

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (an install from the CLI while another runs from a script).

        File-system errors (permissions, a full disk) become BundleErrors that name the path.
        """
        try:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            lock = (self.root / ".lock").open("a")
        except OSError as exc:
            raise BundleError(f"cannot use the bundle store {self.root}: {exc.strerror} ({exc.filename}); "
                              "it belongs to root and the service user: run with sudo") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            except OSError as exc:
                raise BundleError(f"bundle store {self.root}: {exc.strerror or exc} ({exc.filename}); "
                                  "nothing was switched") from None
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _check_signature(self, bundle_dir: Path) -> SignatureInfo | None:
        if not self.require_signature:
            return None
        return verify_bundle(bundle_dir, self.trusted_keys)

    def _link_target(self, link_name: str) -> str | None:
        link = self.root / link_name
        if not link.is_symlink():
            return None
        return Path(os.readlink(link)).name

    def current(self) -> Path | None:
        name = self._link_target(CURRENT_LINK)
        return self.versions_dir / name if name else None

    def previous(self) -> Path | None:
        name = self._link_target(PREVIOUS_LINK)
        return self.versions_dir / name if name else None

    def list(self) -> list[InstalledVersion]:
        if not self.versions_dir.is_dir():
            return []
        cur, prev = self._link_target(CURRENT_LINK), self._link_target(PREVIOUS_LINK)
        return [
            InstalledVersion(name=p.name, path=p, is_current=p.name == cur, is_previous=p.name == prev,
                             signed=(p / SIGNATURE_FILE).is_file())
            for p in sorted(self.versions_dir.iterdir())
            if p.is_dir() and not p.name.startswith(".")
        ]

    def install(self, src: Path, *, activate: bool = True) -> Path:
        """Copy ``src`` in as a new version (checked), optionally activate it; returns the version's path.

        Installing the same content again is a no-op (then activation only).
        """
        with BundleDir(src) as source:
            return self._install(source, activate)

    def _install(self, source: BundleDir, activate: bool) -> Path:
        name, version = _manifest_identity(source)
        with self._locked():
            tmp = self.versions_dir / f".incoming-{uuid.uuid4().hex}"
            try:
                for rel in source.list_files():  # links and special files are refused before anything is copied
                    _copy_synced(source, rel, tmp / rel)
                for sub in sorted({p for p in tmp.rglob("*") if p.is_dir()} | {tmp}, reverse=True):
                    _fsync_dir(sub)
                self._check_signature(tmp)
                if self._validate is not None:
                    self._validate(tmp)
                target = self.versions_dir / f"{name}-{version}-{content_digest(tmp)[:12]}"
                if target.exists():
                    if content_digest(target) != content_digest(tmp):
                        raise BundleError(f"{target} exists with other content (altered on disk?); "
                                          "remove it by hand, then install again")
                    shutil.rmtree(tmp)
                else:
                    os.rename(tmp, target)
                    _fsync_dir(self.versions_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if activate:
                self._activate_locked(target.name)
        return target

    def activate(self, version_name: str) -> Path:
        """Make an installed version current (the old current becomes previous)."""
        with self._locked():
            return self._activate_locked(version_name)

    def rollback(self) -> Path:
        """Switch back to the previous version; the version rolled back from becomes previous."""
        with self._locked():
            prev = self._link_target(PREVIOUS_LINK)
            if prev is None:
                raise BundleError(f"nothing to roll back to: {self.root / PREVIOUS_LINK} does not exist "
                                  "(only one version has been active)")
            return self._activate_locked(prev)

    def _activate_locked(self, version_name: str) -> Path:
        target = self.versions_dir / Path(version_name).name
        if not target.is_dir() or target.name.startswith("."):
            names = ", ".join(v.name for v in self.list()) or "none"
            raise BundleError(f"no installed version {version_name!r} (installed: {names})")
        self._check_signature(target)
        old = self._link_target(CURRENT_LINK)
        if old == target.name:
            return target
        if old is not None:
            self._switch_link(PREVIOUS_LINK, old)
        self._switch_link(CURRENT_LINK, target.name)
        return target

    def _switch_link(self, link_name: str, version_name: str) -> None:
        # Relative target, so the whole store can be moved or mounted elsewhere.
        tmp = self.root / f".{link_name}.{uuid.uuid4().hex}"
        os.symlink(Path(VERSIONS_DIR) / version_name, tmp)
        os.replace(tmp, self.root / link_name)
        _fsync_dir(self.root)
