"""External data on ONNX Runtime before 1.24 (Python 3.10 / JetPack 6): no call takes it from memory, so the verified
bytes go through a private temporary copy. Run here on any version by taking that path on purpose."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tests.policy import tiny_bundles as tiny
from vla_edge.bundle import load_bundle
from vla_edge.policy import _open_from_private_copy, open_session, session_options


def test_the_private_copy_runs_the_verified_bytes_and_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    bundle = load_bundle(tiny.build_chained_external_bundle(tmp_path / "pieces"))
    graph, data = "fp32/layers.onnx", "fp32/layers.onnx.data"
    read: list[str] = []

    def read_verified(rel: str) -> bytes:
        read.append(rel)
        return bundle.read_verified(rel)

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    copied = _open_from_private_copy(read_verified(graph), read_verified, graph, session_options(1),
                                     ["CPUExecutionProvider"], [data], None)
    assert read == [graph, data]  # each file read once, through the verifying reader
    assert list(scratch.iterdir()) == []  # the private copy is gone once the session exists
    feeds = {i.name: np.random.default_rng(0).standard_normal(
        [d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32) for i in copied.get_inputs()}
    # The daemon's own path (from memory on ORT >= 1.24, this same copy on 1.23) gives the same numbers.
    direct = open_session(bundle.read_verified, graph, lambda: session_options(1), ["CPUExecutionProvider"], [data])
    for a, b in zip(copied.run(None, feeds), direct.run(None, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(out).sum() > 0 for out in copied.run(None, feeds))  # the weights really arrived
