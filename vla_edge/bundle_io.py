"""Reading a bundle's files without ever leaving the bundle, and strict JSON for its manifest and signature.

Every file is opened relative to a descriptor of the bundle directory, one path component at a time with
``O_NOFOLLOW``: a symbolic link anywhere below the bundle root (a graph, ``manifest.json``, a variant directory)
is refused *before* anything behind it is opened, and so is anything that is not a regular file (a FIFO would
block the reader; a device would never end). The bundle root itself may be a link (the store's ``current``);
it is resolved once, when the directory is opened, and everything after that is relative to that descriptor.

``read_verified`` is the one way the runtime reads a file it will use: it reads the bytes once, checks their
size and sha256 against what the manifest (or the signature) says, and returns those same bytes, so the bytes
that were verified are the bytes that run; a file swapped or changed between a check and a load is impossible
by construction. File names must be UTF-8 (a name that is not would fail later in signing and installing).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vla_edge.errors import BundleError

# O_NONBLOCK: opening a FIFO planted under a graph's name returns at once (and is then refused as not a regular
# file) instead of blocking the daemon's start forever. It changes nothing for regular files.
_OPEN_FILE = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FD = os.open in os.supports_dir_fd and os.scandir in os.supports_fd and hasattr(os, "O_NOFOLLOW")
_CHUNK = 1 << 20
MAX_DEPTH = 16  # directory levels below the bundle root
MAX_FILES = 10_000  # files in one bundle
MAX_JSON_DEPTH = 64  # nesting of manifest.json / signature.json (the schema needs 6)


class FileMissing(BundleError):
    """A file the caller asked for is not in the bundle."""


def check_name(rel: str) -> tuple[str, ...]:
    """Split a '/'-separated path relative to the bundle into components, or raise BundleError.

    Refused: absolute paths, empty, '.' and '..' components, backslashes, NUL, and names that are not UTF-8.
    """
    shown = ascii(rel)
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"bundle file name {shown} is empty")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"bundle file name {shown} is not valid UTF-8 (rename the file)") from None
    parts = tuple(rel.split("/"))
    if rel.startswith("/") or "\\" in rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"bundle file name {shown} must be a relative path inside the bundle "
                          "('/'-separated, no '.', '..', empty parts or backslashes)")
    if len(parts) > MAX_DEPTH + 1:
        raise BundleError(f"bundle file name {shown} is nested deeper than {MAX_DEPTH} directories")
    return parts


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


class BundleDir:
    """An open bundle directory. Use as a context manager (it holds a directory descriptor).

    All reads go through ``open``, which walks the relative name component by component from the directory's
    descriptor and refuses symbolic links and anything but directories and regular files.
    """

    def __init__(self, path: str | Path) -> None:
        root = Path(path).expanduser()
        try:
            self.path = root.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise BundleError(f"bundle directory not found: {root}") from None
        except OSError as exc:
            raise BundleError(f"cannot open bundle directory {root}: {_describe(exc)}") from None
        if not self.path.is_dir():
            raise BundleError(f"bundle directory not found: {root} (it is not a directory)")
        self._fd: int | None = None
        if _DIR_FD:
            try:
                self._fd = os.open(self.path, _OPEN_DIR)
            except OSError as exc:
                raise BundleError(f"cannot open bundle directory {self.path}: {_describe(exc)}") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BundleDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- opening ------------------------------------------------------------------------------------------
    def _refusal(self, rel: str, exc: OSError, dir_fd: int | None, name: str) -> BundleError:
        """Turn an open(2) failure into the reason a user can act on (the file is a link, missing, ...)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False) if dir_fd is not None else os.lstat(name)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            return BundleError(f"bundle {self.path}: {rel} is (or is inside) a symbolic link; bundles may not "
                               "contain links (copy the file in instead)")
        if st is None:
            return FileMissing(f"bundle {self.path}: file {rel} is missing")
        return BundleError(f"bundle {self.path}: cannot open {rel}: {_describe(exc)}")

    def open(self, rel: str) -> int:
        """A read-only descriptor of the regular file ``rel`` inside the bundle (the caller closes it)."""
        parts = check_name(rel)
        if self._fd is None:
            return self._open_by_path(rel, parts)
        dir_fd = os.dup(self._fd)
        try:
            for part in parts[:-1]:
                try:
                    sub = os.open(part, _OPEN_DIR, dir_fd=dir_fd)
                except OSError as exc:
                    raise self._refusal(rel, exc, dir_fd, part) from None
                os.close(dir_fd)
                dir_fd = sub
            try:
                fd = os.open(parts[-1], _OPEN_FILE, dir_fd=dir_fd)
            except OSError as exc:
                raise self._refusal(rel, exc, dir_fd, parts[-1]) from None
        finally:
            os.close(dir_fd)
        return self._regular(fd, rel)

    def _open_by_path(self, rel: str, parts: tuple[str, ...]) -> int:
        """Platforms without openat(2): check each component with lstat, then open (a narrow race remains)."""
        here = self.path
        for part in parts:
            here = here / part
            try:
                st = os.lstat(here)
            except OSError as exc:
                raise self._refusal(rel, exc, None, str(here)) from None
            if stat.S_ISLNK(st.st_mode):
                raise self._refusal(rel, OSError(), None, str(here))
        try:
            fd = os.open(here, _OPEN_FILE)
        except OSError as exc:
            raise self._refusal(rel, exc, None, str(here)) from None
        return self._regular(fd, rel)

    def _regular(self, fd: int, rel: str) -> int:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise BundleError(f"bundle {self.path}: {rel} is not a regular file")
        return fd

    # ---- reading ------------------------------------------------------------------------------------------
    def size(self, rel: str) -> int:
        fd = self.open(rel)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def read_bytes(self, rel: str, max_bytes: int) -> bytes:
        """The whole file, refusing one larger than ``max_bytes`` before reading it."""
        fd = self.open(rel)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            size = os.fstat(fd).st_size
            if size > max_bytes:
                raise BundleError(f"bundle {self.path}: {rel} is {size} bytes; the limit is {max_bytes} bytes")
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise BundleError(f"bundle {self.path}: {rel} grew past {max_bytes} bytes while it was read")
        return data

    def read_verified(self, rel: str, sha256: str, size: int) -> bytes:
        """The bytes of ``rel``, read once, after checking their size and sha256; the same bytes are returned.

        Raises BundleError naming the file when it is missing, a link, not a regular file, or its content
        differs from the expected digest.
        """
        fd = self.open(rel)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            actual = os.fstat(fd).st_size
            if actual != size:
                raise BundleError(f"bundle {self.path}: file {rel} is corrupted "
                                  f"(size {actual} bytes, manifest says {size})")
            data = handle.readall()
        if len(data) != size:
            raise BundleError(f"bundle {self.path}: file {rel} changed while it was read "
                              f"({len(data)} bytes read, {size} expected)")
        if hashlib.sha256(data).hexdigest() != sha256:
            raise BundleError(f"bundle {self.path}: file {rel} is corrupted (sha256 does not match the manifest)")
        return data

    def sha256(self, rel: str) -> tuple[str, int]:
        """(sha256 hex, bytes read) of a file, streamed: for checking files without holding them in memory."""
        fd = self.open(rel)
        digest = hashlib.sha256()
        read = 0
        with os.fdopen(fd, "rb", buffering=0) as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
                read += len(block)
        return digest.hexdigest(), read

    # ---- listing ------------------------------------------------------------------------------------------
    def list_files(self) -> list[str]:
        """Every regular file below the root as sorted relative POSIX paths.

        Refuses (BundleError) symbolic links, special files, names that are not UTF-8, more than MAX_FILES
        files and more than MAX_DEPTH levels, all from directory entries alone: no file is opened.
        """
        found: list[str] = []
        if self._fd is None:
            self._walk_by_path(self.path, "", 0, found)
        else:
            self._walk(os.dup(self._fd), "", 0, found)
        return sorted(found)

    def _check_entry(self, rel: str, is_link: bool, is_dir: bool, is_file: bool) -> None:
        check_name(rel)
        if is_link:
            raise BundleError(f"bundle {self.path} contains a symbolic link: {rel} (bundles may not contain links; "
                              "copy the file in instead)")
        if not (is_dir or is_file):
            raise BundleError(f"bundle {self.path}: {rel} is not a regular file or directory")

    def _walk(self, dir_fd: int, prefix: str, depth: int, found: list[str]) -> None:
        try:
            if depth > MAX_DEPTH:
                raise BundleError(f"bundle {self.path}: {prefix.rstrip('/')} is nested deeper than {MAX_DEPTH} levels")
            with os.scandir(dir_fd) as entries:
                listed = [(e.name, e.is_symlink(), e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                          for e in entries]
            for name, is_link, is_dir, is_file in sorted(listed):
                rel = prefix + name
                self._check_entry(rel, is_link, is_dir, is_file)
                if is_dir:
                    try:
                        sub = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
                    except OSError as exc:
                        raise self._refusal(rel, exc, dir_fd, name) from None
                    self._walk(sub, rel + "/", depth + 1, found)
                else:
                    found.append(rel)
                    if len(found) > MAX_FILES:
                        raise BundleError(f"bundle {self.path} has more than {MAX_FILES} files")
        finally:
            os.close(dir_fd)

    def _walk_by_path(self, here: Path, prefix: str, depth: int, found: list[str]) -> None:
        if depth > MAX_DEPTH:
            raise BundleError(f"bundle {self.path}: {prefix.rstrip('/')} is nested deeper than {MAX_DEPTH} levels")
        with os.scandir(here) as entries:
            listed = [(e.name, e.is_symlink(), e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                      for e in entries]
        for name, is_link, is_dir, is_file in sorted(listed):
            rel = prefix + name
            self._check_entry(rel, is_link, is_dir, is_file)
            if is_dir:
                self._walk_by_path(here / name, rel + "/", depth + 1, found)
            else:
                found.append(rel)
                if len(found) > MAX_FILES:
                    raise BundleError(f"bundle {self.path} has more than {MAX_FILES} files")


# ---- strict JSON ----------------------------------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> Iterator[int]:
    """Nesting depth of parsed JSON, iteratively (no recursion to overflow)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        yield depth
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def load_json_strict(data: bytes, origin: str) -> Any:
    """Parse UTF-8 JSON that a bundle's reader can trust, or raise BundleError naming ``origin``.

    Refused with a clear message instead of a crash or a silent choice: bytes that are not UTF-8, duplicate
    object keys (``json`` would keep the last), NaN/Infinity, nesting deeper than MAX_JSON_DEPTH
    (``RecursionError`` in the parser), and strings that cannot be encoded back (lone surrogate escapes).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{origin} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as exc:
        raise BundleError(f"{origin} has the key {exc.key!r} twice in one object (which one is meant?)") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{origin} is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise BundleError(f"{origin} is not valid JSON: {exc}") from None
    except RecursionError:  # the C parser guards its recursion and raises this at the interpreter's limit
        raise BundleError(f"{origin} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if max(_depth(value)) > MAX_JSON_DEPTH:
        raise BundleError(f"{origin} is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"{origin} contains a string that is not valid Unicode (a lone surrogate escape)") from None
    return value

