"""`vla-edge import lerobot` on RANDOM-WEIGHT LeRobot policies of the four types, built from their config classes at
a small size with shapes unlike the reference (two cameras, non-square frames, 4-6 state and 5-7 action values,
chunks of 12, 25, 30 and 37), saved as lerobot-train saves them in both checkpoint layouts; each import is gated on
parity against LeRobot's own predict_action_chunk, signed, verified, and run by the daemon on the generic simulated
arm with its chunks actuated over the wire.

Needs the LeRobot environment (scripts/setup-lerobot.sh, LeRobot >= 0.5); .ci/run makes it. Without it the
LeRobot tests skip and say how to make it; the command-line tests that need no LeRobot always run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vla_edge.paths import REPO_ROOT

LEROBOT_PYTHON = REPO_ROOT / ".venv-lerobot" / "bin" / "python"
IMPORT_TIMEOUT_S = 3600  # one import exports, quantizes and checks 3 variants: ~2-4 min here; a hang guard, not a
# speed check (the small SmolVLA import ran past 1500 s at load average 30 on the 2 cores)


def _lerobot_version() -> tuple[int, ...] | None:
    if not LEROBOT_PYTHON.exists():
        return None
    done = subprocess.run([str(LEROBOT_PYTHON), "-c", "from importlib.metadata import version; print(version('lerobot'))"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return None
    return tuple(int(p) for p in done.stdout.strip().split(".")[:2] if p.isdigit())


VERSION = _lerobot_version()
needs_lerobot = pytest.mark.skipif(
    VERSION is None or VERSION < (0, 5),
    reason=f"no LeRobot >= 0.5 environment at {LEROBOT_PYTHON.parent.parent} (found {VERSION}): "
           "run scripts/setup-lerobot.sh",
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _cli(*args: str, timeout: float = IMPORT_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vla_edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every small fixture in one LeRobot process (importing torch and LeRobot once)."""
    root = tmp_path_factory.mktemp("lerobot-train")
    done = subprocess.run(
        [str(LEROBOT_PYTHON), "-m", "models.lerobot.fixtures", "--type", "act,diffusion,smolvla,pi0,pi05",
         "--layout", "0.4,0.3", "--out", str(root)],
        capture_output=True, text=True, timeout=1200, env=_env(), cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return {k: Path(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from vla_edge.signing import generate_keypair

    return generate_keypair(tmp_path_factory.mktemp("keys"))


def _import(checkpoint: Path, out: Path, key: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli("import", "lerobot", str(checkpoint), "--out", str(out), "--key", str(key), "--fps", "20",
                "--max-seconds", "2", "--observations", "6", *extra)


def _check_bundle(out: Path, public: Path, policy_type: str, layout: str, precisions: tuple[str, ...]) -> dict:
    from vla_edge.signing import verify_bundle

    info = verify_bundle(out, [public])
    assert info.file_count > 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 2
    policy = manifest["policy"]
    assert policy["type"] == policy_type and policy["random_weights"] is True
    assert f"{layout}.x layout" in policy["source"]
    assert "RANDOM WEIGHTS" in manifest["description"]
    assert set(manifest["variants"]) == set(precisions)
    bounds = {"fp32": 0.999, "int8": 0.99, "int4": 0.95}
    for precision in precisions:
        parity = manifest["variants"][precision]["parity"]
        assert parity["passed"] and parity["observations"] == 6
        assert parity["cosine"] >= bounds[precision] and parity["cosine_bound"] == bounds[precision]
        assert parity["reference_spread"] > 0.005  # the outputs moved with the observations and the noise
        assert "predict_action_chunk" in parity["reference"]
    assert manifest["variants"]["fp32"]["parity"]["action_mae"] < 1e-3
    return manifest


def _run_on_daemon(out: Path, tmp_path: Path, public: Path, precision: str, thresholds: dict[str, float]):
    from hil.generic_arm import run_bundle_step

    # random weights: chunk-to-chunk consistency and spread mean nothing, so the gate is opened wide here (the
    # gate itself is tested on the reference model); what is tested is that the daemon runs the imported graphs
    threshold_file = tmp_path / "thresholds.json"
    threshold_file.write_text(json.dumps({"thresholds": thresholds}))
    return run_bundle_step(out, tmp_path, "pick up the red block", precision=precision,
                           policy={"require_signature": True, "trusted_keys": [str(public)]},
                           confidence={"thresholds_file": str(threshold_file)})


WIDE_OPEN = {"spread": 1e9, "consistency": 1e9, "ood": 1e9, "limits": 1e9, "jerk": 1e9}


@needs_lerobot
@pytest.mark.slow
@pytest.mark.timeout(2 * IMPORT_TIMEOUT_S)
@pytest.mark.parametrize(("policy_type", "precision", "shape"), [
    ("act", "int8", (1, 37, 7)),
    ("diffusion", "int8", (4, 6, 5)),
    ("smolvla", "int4", (4, 30, 6)),
    ("pi0", "int8", (4, 25, 7)),
])
def test_import_040_layout_then_the_daemon_actuates_its_chunks(policy_type, precision, shape, checkpoints, keys,
                                                              tmp_path: Path) -> None:
    private, public = keys
    out = tmp_path / "bundle"
    extra = ("--layers-per-block", "1") if policy_type == "pi0" else ()
    done = _import(checkpoints[f"{policy_type}-0.4"], out, private, *extra)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "parity int8" in done.stdout and "RANDOM WEIGHTS" in done.stdout
    manifest = _check_bundle(out, public, policy_type, "0.4", ("fp32", "int8", "int4"))
    assert not (tmp_path / "bundle.staging").exists()
    if policy_type == "pi0":  # the prefix in pieces, each with its external data
        blocks = [g for g in manifest["graphs"] if g.startswith("layers_")]
        assert len(blocks) == 2 and all(manifest["variants"]["int4"]["graphs"][g]["external_data"] for g in blocks)
    run = _run_on_daemon(out, tmp_path, public, precision, WIDE_OPEN)
    assert run.report.outcome == "done", run.report
    assert run.chunks_accepted >= 1 and run.chunk_shapes and all(s == shape for s in run.chunk_shapes)
    assert len(run.actuated) >= shape[1] // 2 and all(v.shape == (shape[2],) for v in run.actuated)
    space = manifest["action_space"]
    for values in run.actuated:
        assert np.all(values >= np.asarray(space["low"]) - 1e-6) and np.all(values <= np.asarray(space["high"]) + 1e-6)


@needs_lerobot
@pytest.mark.slow
@pytest.mark.timeout(2 * IMPORT_TIMEOUT_S)
@pytest.mark.parametrize("policy_type", ["act", "diffusion", "smolvla"])
def test_import_030_layout_statistics_from_the_safetensors(policy_type, checkpoints, keys, tmp_path: Path) -> None:
    """LeRobot 0.3.x kept the statistics as buffers in model.safetensors: the import finds them, builds LeRobot's
    processors from them, and the exported graphs match LeRobot to fp32 precision."""
    private, public = keys
    checkpoint = checkpoints[f"{policy_type}-0.3"]
    assert not (checkpoint / "policy_preprocessor.json").exists()
    out = tmp_path / "bundle"
    done = _import(checkpoint, out, private, "--precisions", "fp32,int8")
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    manifest = _check_bundle(out, public, policy_type, "0.3", ("fp32", "int8"))
    # the statistics came from the buffers: the state normalisation is not the identity
    assert manifest["observation"]["state"]["normalisation"]["mode"] in ("mean_std", "min_max")


@needs_lerobot
@pytest.mark.slow
@pytest.mark.timeout(2 * IMPORT_TIMEOUT_S)
def test_import_pi05_state_in_the_prompt(checkpoints, keys, tmp_path: Path) -> None:
    """π0.5 through the same path: the state is discretised into the prompt (tokens compared with LeRobot's)."""
    private, public = keys
    out = tmp_path / "bundle"
    done = _import(checkpoints["pi05-0.4"], out, private, "--precisions", "fp32,int4", "--layers-per-block", "2")
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    manifest = _check_bundle(out, public, "pi05", "0.4", ("fp32", "int4"))
    tokenizer = manifest["language"]["tokenizer"]
    assert tokenizer["state_in_prompt"] == {"bins": 256, "pad_to": None} and tokenizer["stand_in"] is True
    assert "State: {state}" in tokenizer["prompt"]


@needs_lerobot
@pytest.mark.slow
@pytest.mark.timeout(2 * IMPORT_TIMEOUT_S)
def test_a_variant_beyond_its_bound_refuses_the_import_naming_it(checkpoints, keys, tmp_path: Path) -> None:
    private, _ = keys
    out = tmp_path / "bundle"
    done = _import(checkpoints["act-0.4"], out, private, "--precisions", "fp32,int8", "--cosine-bounds",
                   "int8=0.9999999")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "int8: cosine 0.99" in lines[0] and "< 0.9999999" in lines[0]
    assert not out.exists() and (tmp_path / "bundle.staging" / "manifest.json").exists()  # kept for inspection
    staged = json.loads((tmp_path / "bundle.staging" / "manifest.json").read_text())
    assert staged["variants"]["int8"]["parity"]["passed"] is False
    assert staged["variants"]["fp32"]["parity"]["passed"] is True


# ---- the command line, no LeRobot needed ---------------------------------------------------------------------
def test_missing_lerobot_environment_is_one_clear_line(tmp_path: Path) -> None:
    folder = tmp_path / "pretrained_model"
    folder.mkdir()
    done = _cli("import", "lerobot", str(folder), "--out", str(tmp_path / "b"), "--unsigned", "--lerobot-venv",
                str(tmp_path / "no-venv"), timeout=600)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no LeRobot environment" in done.stderr
    assert "scripts/setup-lerobot.sh" in done.stderr


def test_signing_key_or_unsigned_is_required(tmp_path: Path) -> None:
    folder = tmp_path / "pretrained_model"
    folder.mkdir()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    done = _cli("import", "lerobot", str(folder), "--out", str(tmp_path / "b"), "--lerobot-venv", str(venv),
                timeout=600)
    assert done.returncode == 2 and "--key" in done.stderr and done.stderr.strip().count("\n") == 0


@needs_lerobot
@pytest.mark.slow
def test_a_folder_that_is_not_a_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    folder = tmp_path / "pretrained_model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    done = _cli("import", "lerobot", str(folder), "--out", str(tmp_path / "b"), "--unsigned", "--fps", "10",
                timeout=1800)
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        f"vla-edge import: error: {folder} is not a LeRobot pretrained_model folder (needs config.json and "
        "model.safetensors; lerobot-train writes them under checkpoints/NNN/pretrained_model)"]
