"""Crash-safe file replacement for the dataset writers: write to a staging file, fsync, rename over the target.

All staging files live in ``<dataset>/.staging/`` (same file system, so a rename is atomic; a hidden directory
that LeRobot's readers never look into). A writer that starts empties it: whatever is there was left by a writer
that died, and nothing refers to it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

STAGING = ".staging"


def staging_dir(root: Path) -> Path:
    path = Path(root) / STAGING
    path.mkdir(parents=True, exist_ok=True)
    return path


def clear_staging(root: Path) -> None:
    path = Path(root) / STAGING
    if path.is_dir():
        for leftover in path.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)


def staging_file(root: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="rec-", suffix=suffix, dir=staging_dir(root))
    os.close(fd)
    return Path(name)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(staged: Path, target: Path, durable: bool = True) -> None:
    """Make a fully written staging file the new ``target`` in one atomic step (after it is on disk).

    ``durable=False`` skips the fsync (bulk recording scripts): the rename still makes the replacement atomic
    for a process that dies, but a power cut may lose what was installed shortly before it."""
    if durable:
        fsync_file(staged)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, target)


def write_bytes(root: Path, target: Path, payload: bytes, durable: bool = True) -> None:
    staged = staging_file(root, ".tmp")
    try:
        staged.write_bytes(payload)
        install(staged, target, durable)
    finally:
        staged.unlink(missing_ok=True)


def write_json(root: Path, target: Path, data: Any, durable: bool = True) -> None:
    write_bytes(root, target, json.dumps(data, indent=4, ensure_ascii=False).encode("utf-8"), durable)


def write_parquet(root: Path, target: Path, table: Any, durable: bool = True) -> None:
    import pyarrow.parquet as pq

    staged = staging_file(root, ".parquet")
    try:
        pq.write_table(table, staged, compression="snappy")
        install(staged, target, durable)
    finally:
        staged.unlink(missing_ok=True)
