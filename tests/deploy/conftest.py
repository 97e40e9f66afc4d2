"""Fixtures shared by the deployment tests: small bundle-shaped directories and signing keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from vla_edge.signing import generate_keypair


def build_bundle(root: Path, name: str = "test", version: str = "1.0.0") -> Path:
    """manifest.json + fp32/int8/int4 graphs of random bytes: the shape of a bundle, not a loadable one."""
    bundle = root / "bundle"
    rng = np.random.default_rng(0)
    for variant in ("fp32", "int8", "int4"):
        (bundle / variant).mkdir(parents=True)
        for graph in ("instruction_encoder", "observation_encoder", "denoiser"):
            (bundle / variant / f"{graph}.onnx").write_bytes(rng.bytes(257))
    (bundle / "manifest.json").write_text(json.dumps({"name": name, "version": version}))
    return bundle


@pytest.fixture()
def make_bundle() -> Callable[..., Path]:
    return build_bundle


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(private, public) PEM paths of a fresh ed25519 key pair."""
    return generate_keypair(tmp_path / "keys")
