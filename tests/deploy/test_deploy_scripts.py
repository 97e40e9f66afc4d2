"""deploy/install.sh and the board set-up scripts, run for real under a --prefix (and as dry runs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vla_edge.config import load_settings
from vla_edge.paths import REPO_ROOT

INSTALL = REPO_ROOT / "deploy" / "install.sh"
JETSON = REPO_ROOT / "deploy" / "jetson" / "setup.sh"
PI = REPO_ROOT / "deploy" / "raspberry-pi" / "setup.sh"


def sh(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, timeout=120, env=full_env)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_install_under_prefix_is_complete_and_idempotent(tmp_path: Path):
    root = tmp_path / "root"
    first = sh(INSTALL, "--prefix", root, "--skip-venv")
    assert first.returncode == 0, first.stderr
    for d in ("etc/vla-edge/keys", "etc/vla-edge/trusted-keys", "var/lib/vla-edge/state",
              "var/lib/vla-edge/dataset", "var/lib/vla-edge/bundles", "opt/vla-edge/docs"):
        assert (root / d).is_dir(), d
    unit = root / "etc/systemd/system/vla-edge.service"
    assert unit.read_text() == (REPO_ROOT / "systemd/vla-edge.service").read_text()
    config = root / "etc/vla-edge/vla-edge.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert oct((root / "var/lib/vla-edge/state").stat().st_mode & 0o777) == "0o750"
    # The installed config is valid for this version and requires signatures.
    settings = load_settings(config)
    assert settings.policy.require_signature is True
    assert settings.policy.bundle == Path("/var/lib/vla-edge/bundles/current")
    assert settings.task.state_dir == Path("/var/lib/vla-edge/state")
    assert settings.telemetry.log_format == "json" and settings.telemetry.metrics_host == "127.0.0.1"
    # Run again after the operator edited the config: the edit survives, nothing else changes.
    config.write_text(config.read_text().replace('source = "0"', 'source = "/dev/video2"'))
    before = tree(root)
    second = sh(INSTALL, "--prefix", root, "--skip-venv")
    assert second.returncode == 0, second.stderr
    assert "kept" in second.stdout
    assert 'source = "/dev/video2"' in config.read_text()
    assert tree(root) == before


def test_dry_run_changes_nothing_and_shows_the_plan(tmp_path: Path):
    root = tmp_path / "root"
    proc = sh(INSTALL, "--dry-run", "--prefix", root, "--python", "/usr/bin/python3")
    assert proc.returncode == 0, proc.stderr
    assert not root.exists()
    assert f"+ /usr/bin/python3 -m venv --system-site-packages {root}/opt/vla-edge/venv" in proc.stdout
    assert f"+ {root}/opt/vla-edge/venv/bin/python -m pip install --quiet --upgrade {REPO_ROOT}" in proc.stdout
    assert f"+ install -m 0644 {REPO_ROOT}/systemd/vla-edge.service {root}/etc/systemd/system/vla-edge.service" in proc.stdout
    assert "dry run: nothing was changed" in proc.stdout


def test_install_without_root_or_prefix_says_what_to_do():
    if os.geteuid() == 0:
        proc = sh(INSTALL, "--bogus")
        assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
        return
    proc = sh(INSTALL)
    assert proc.returncode == 2 and "run as root" in proc.stderr


def _verify_with_drop_in(tmp_path: Path, drop_in: Path) -> float:
    """systemd-analyze verify + security of the unit with a generated drop-in; returns the exposure."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    stage = tmp_path / "units"
    (stage / "vla-edge.service.d").mkdir(parents=True)
    exe = Path(sys.executable).parent / "vla-edge"
    (stage / "vla-edge.service").write_text(
        (REPO_ROOT / "systemd/vla-edge.service").read_text().replace("/opt/vla-edge/venv/bin/vla-edge", str(exe)))
    shutil.copy(drop_in, stage / "vla-edge.service.d" / drop_in.name)
    verify = subprocess.run(["systemd-analyze", "verify", str(stage / "vla-edge.service")],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(stage / "vla-edge.service")],
                         capture_output=True, text=True, timeout=60)
    return float(re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", sec.stdout).group(1))


def test_jetson_setup_opens_exactly_the_gpu_nodes_the_board_has(tmp_path: Path):
    root = tmp_path / "root"
    dev = tmp_path / "dev"
    (dev / "nvgpu" / "igpu0").mkdir(parents=True)
    for node in ("nvmap", "nvhost-ctrl-gpu", "nvhost-as-gpu", "nvgpu/igpu0/ctrl", "video0", "sda"):
        (dev / node).write_text("")
    proc = sh(JETSON, "--prefix", root, "--force", "--skip-ort", env={"DEV_ROOT": str(dev)})
    assert proc.returncode == 0, proc.stderr
    conf = root / "etc/systemd/system/vla-edge.service.d/jetson.conf"
    allowed = re.findall(r"^DeviceAllow=(\S+) rw$", conf.read_text(), re.M)
    assert sorted(allowed) == ["/dev/nvgpu/igpu0/ctrl", "/dev/nvhost-as-gpu", "/dev/nvhost-ctrl-gpu", "/dev/nvmap"]
    assert "MemoryDenyWriteExecute=no" in conf.read_text()
    assert (root / "var/lib/vla-edge/state/trt-cache").is_dir()
    score = _verify_with_drop_in(tmp_path, conf)
    print(f"exposure with the generated Jetson drop-in: {score}")
    assert score <= 3.0


def test_jetson_setup_refuses_a_non_jetson_and_needs_an_ort_source(tmp_path: Path):
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("this is a Jetson")
    proc = sh(JETSON, "--prefix", tmp_path)
    assert proc.returncode == 2 and "not a Jetson" in proc.stderr
    proc = sh(JETSON, "--prefix", tmp_path, "--force", "--dry-run")
    assert proc.returncode == 2 and "no onnxruntime-gpu source" in proc.stderr
    proc = sh(JETSON, "--prefix", tmp_path, "--force", "--dry-run", "--ort-index", "https://example.invalid/jp6")
    assert proc.returncode == 0, proc.stderr
    assert "pip uninstall --yes --quiet onnxruntime" in proc.stdout
    assert "--extra-index-url https://example.invalid/jp6 onnxruntime-gpu" in proc.stdout


@pytest.mark.parametrize(("nproc", "cores", "threads"), [("4", "1-3", "3"), ("2", "0-1", "2")])
def test_raspberry_pi_setup_pins_threads_and_sets_governor(tmp_path: Path, nproc: str, cores: str, threads: str,
                                                           monkeypatch):
    root = tmp_path / "root"
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    sys_root = tmp_path / "sys"
    gov = sys_root / "devices/system/cpu/cpufreq/policy0/scaling_governor"
    gov.parent.mkdir(parents=True)
    gov.write_text("ondemand\n")
    env = {"NPROC": nproc, "MODEL_FILE": str(model), "SYS_ROOT": str(sys_root)}
    proc = sh(PI, "--prefix", root, "--force", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "board: Raspberry Pi 5" in proc.stdout
    conf = root / "etc/systemd/system/vla-edge.service.d/raspberry-pi.conf"
    text = conf.read_text()
    assert f"CPUAffinity={cores}\n" in text
    assert f"Environment=VLA_EDGE_POLICY__INTRA_OP_THREADS={threads}\n" in text
    assert gov.read_text().strip() == "performance"
    assert (root / "etc/systemd/system/vla-edge-cpu-governor.service").is_file()
    # The thread count reaches the daemon's settings through the environment the drop-in sets.
    monkeypatch.setenv("VLA_EDGE_POLICY__INTRA_OP_THREADS", threads)
    assert load_settings().policy.intra_op_threads == int(threads)
    assert _verify_with_drop_in(tmp_path, conf) <= 3.0


def test_raspberry_pi_setup_rejects_bad_cores_and_other_boards(tmp_path: Path):
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B\0")
    env = {"NPROC": "4", "MODEL_FILE": str(model), "SYS_ROOT": str(tmp_path / "sys")}
    proc = sh(PI, "--prefix", tmp_path / "r", "--force", "--cores", "2-7", env=env)
    assert proc.returncode == 2 and "--cores 2-7 is not a list of cores 0..3" in proc.stderr
    other = tmp_path / "other"
    other.write_bytes(b"Some Other Board\0")
    proc = sh(PI, "--prefix", tmp_path / "r", env={**env, "MODEL_FILE": str(other)})
    assert proc.returncode == 2 and "not a Raspberry Pi" in proc.stderr
