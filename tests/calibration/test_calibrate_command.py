"""`vla-edge calibrate` end to end on the reference bundle: real rollouts, thresholds the daemon then reads."""

import json
import shutil

import pytest

from vla_edge.bundle import load_bundle
from vla_edge.cli import main
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.service import load_thresholds


@pytest.fixture()
def bundle_copy(tmp_path):
    """The reference bundle with its own manifest (graphs copied: bundles may not contain links), plus a signature file."""
    root = tmp_path / "bundle"
    manifest = json.loads((REFERENCE_BUNDLE_DIR / "manifest.json").read_text())
    for rel in manifest["files"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REFERENCE_BUNDLE_DIR / rel, root / rel)
    shutil.copy(REFERENCE_BUNDLE_DIR / "manifest.json", root / "manifest.json")
    (root / "signature.json").write_text("{}")
    return root


ARGS = ["--chains", "3", "--false-alarm-rate", "0.5", "--test-fraction", "0", "--samples", "4"]


def test_write_bundle_puts_thresholds_in_the_manifest_and_asks_for_a_new_signature(bundle_copy, capsys):
    before = load_bundle(bundle_copy).manifest.confidence_thresholds or {}
    assert main(["calibrate", "--bundle", str(bundle_copy), *ARGS, "--write-bundle"]) == 0
    thresholds = load_bundle(bundle_copy).manifest.confidence_thresholds  # digests of the graphs still match
    assert {"spread", "consistency", "ood"} <= set(thresholds)
    assert set(thresholds) == {"spread", "consistency", "ood"} | set(before)  # others (e.g. jerk) are kept
    assert all(value >= 0 for name, value in thresholds.items() if not name.startswith("score."))
    out = capsys.readouterr().out
    assert "sign it again" in out and "spread" in out


def test_out_file_is_what_the_daemon_reads(bundle_copy, tmp_path):
    path = tmp_path / "thresholds.json"
    before = load_bundle(bundle_copy).manifest.confidence_thresholds
    assert main(["calibrate", "--bundle", str(bundle_copy), *ARGS, "--out", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["v"] == 1 and report["rule"] == "false_alarm_rate" and report["chains"] == 3
    assert load_thresholds(path) == report["thresholds"]
    assert load_bundle(bundle_copy).manifest.confidence_thresholds == before  # --out leaves the bundle alone


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-miss-rate", "1.5", "--out", "x.json"], "between 0 and 1"),
        (["--chains", "1", "--out", "x.json"], "at least 2"),
        (["--bundle", "/nonexistent/bundle", "--out", "x.json"], "bundle directory not found"),
    ],
)
def test_bad_input_is_a_clear_error(extra, message, capsys):
    assert main(["calibrate", *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_product_never_imports_the_benchmarks():
    """`vla-edge calibrate` and every other runtime module run what they measure from vla_edge/ itself; only the
    `vla-edge bench` command, whose job is running benchmarks, may reach into bench/."""
    import ast

    from vla_edge.paths import REPO_ROOT

    offenders = []
    for path in sorted((REPO_ROOT / "vla_edge").rglob("*.py")):
        if path.relative_to(REPO_ROOT).as_posix() == "vla_edge/commands/bench.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n == "bench" or n.startswith("bench.")]
    assert offenders == []


def test_the_score_gate_replaces_the_bundles_whole_map_or_says_how_much_data_it_needs(bundle_copy, capsys):
    from vla_edge.confidence import FailureScore

    code = main(["calibrate", "--bundle", str(bundle_copy), "--chains", "2", "--samples", "4", "--test-fraction", "0",
                 "--target-miss-rate", "0.05", "--write-bundle"])
    assert code == 2 and "needs at least 19 failed held-out steps" in capsys.readouterr().err
    before = load_bundle(bundle_copy).manifest.confidence_thresholds
    assert FailureScore.from_thresholds(before) is not None  # the committed gate is the combined score
