"""`vla-edge bundle upgrade` and `bundle show`: a schema-1 bundle converted on disk runs exactly as before; the
random-weight and stand-in-tokenizer labels are shown; mistakes are one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.policy import tiny_bundles as tiny
from vla_edge.bundle import load_bundle
from vla_edge.cli import main
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.policy import PolicyRunner


def test_upgraded_reference_runs_exactly_as_schema_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "reference-v2"
    assert main(["bundle", "upgrade", str(REFERENCE_BUNDLE_DIR), str(out),
                 "--state-names", "gripper_x,gripper_y,grip"]) == 0
    upgraded = load_bundle(out)
    assert upgraded.manifest.schema_version == 2
    assert upgraded.manifest.state_names == ["gripper_x", "gripper_y", "grip"]
    runners = [PolicyRunner(load_bundle(d), "int8", intra_op_threads=1) for d in (REFERENCE_BUNDLE_DIR, out)]
    image = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    state = np.array([0.3, 0.6, 0.0], np.float32)
    noise = np.random.default_rng(2).standard_normal((4, 8, 4)).astype(np.float32)
    chunks = []
    for runner in runners:
        runner.set_instruction("put the red block in the left bin")
        chunks.append(runner.sample(runner.encode(image, state), 4, noise=noise).actions)
    np.testing.assert_array_equal(chunks[0], chunks[1])
    assert main(["bundle", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "reference 0.1.0 (schema 2): reference" in shown and "trained" in shown
    assert "state: gripper_x, gripper_y, grip" in shown and "step ends on: done action 'done'" in shown


def test_show_labels_random_weights_and_stand_in_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    directory = tiny.build_flow_bundle(tmp_path / "flow")
    assert main(["bundle", "show", str(directory)]) == 0
    shown = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in shown and "STAND-IN tokenizer" in shown
    assert "cameras: top 8×8 (resize_with_pad), wrist 6×6 (resize)" in shown


def test_upgrade_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bundle", "upgrade", str(REFERENCE_BUNDLE_DIR), str(tmp_path / "x"), "--state-names", "a,b"]) == 2
    assert "2 state names for state_dim 3" in capsys.readouterr().err
    flow = tiny.build_flow_bundle(tmp_path / "flow")
    assert main(["bundle", "upgrade", str(flow), str(tmp_path / "y")]) == 2
    assert "is already schema 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_remote_tier_refuses_a_bundle_outside_its_contract(tmp_path: Path) -> None:
    """The remote contract carries one image and an embedding: a two-view bundle is refused by name at start."""
    from vla_edge.errors import BundleError
    from vla_edge.remote_server import RemoteSampler

    with pytest.raises(BundleError, match="the remote tier serves bundles with one camera view and an embedding"):
        RemoteSampler(load_bundle(tiny.build_flow_bundle(tmp_path / "flow")), "fp32")
