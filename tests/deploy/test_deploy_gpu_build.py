"""A Jetson keeps its GPU build of ONNX Runtime: install.sh, jetson/setup.sh, install.sh again, all for real under a
--prefix with pip, and a stand-in wheel named ``onnxruntime-gpu`` (built here) in place of JetPack's."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vla_edge.paths import REPO_ROOT

INSTALL = REPO_ROOT / "deploy" / "install.sh"
JETSON = REPO_ROOT / "deploy" / "jetson" / "setup.sh"
STANDIN_VERSION = "1.23.0"
STANDIN_INIT = f'''"""Stand-in for JetPack's onnxruntime-gpu, built by tests/deploy/test_deploy_gpu_build.py: metadata only."""
__version__ = "{STANDIN_VERSION}"


def get_available_providers():
    return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
'''


def standin_wheel(directory: Path) -> Path:
    """A pure-Python wheel named onnxruntime-gpu that installs the module ``onnxruntime``, as the real one does."""
    dist_info = f"onnxruntime_gpu-{STANDIN_VERSION}.dist-info"
    files = {
        "onnxruntime/__init__.py": STANDIN_INIT,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: {STANDIN_VERSION}\n"
                                 "Summary: test stand-in for a GPU build of ONNX Runtime\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: vla-edge-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"onnxruntime_gpu-{STANDIN_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*map(str, args)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})})


def installed(python: Path, dist: str) -> str | None:
    proc = run(python, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))")
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two real pip installs with every runtime dependency: minutes on a loaded 2-core VM
def test_jetson_setup_keeps_the_gpu_build_and_pip_check_is_clean(tmp_path: Path):
    root = tmp_path / "root"
    venv = root / "opt/vla-edge/venv"
    python = venv / "bin/python"
    # The venv install.sh would make, without the system's site-packages so that `pip check` judges it alone.
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    # install.sh takes a wheel as --source (as an image build would): built once, installed twice, from a copy
    # of the sources (setuptools writes build/ and *.egg-info next to the sources it builds).
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "work", "bundles", "results", "*.egg-info", "build")
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for package in ("vla_edge", "hil", "models", "bench"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=skip)
    built = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", source)
    assert built.returncode == 0, built.stderr[-3000:]
    (package,) = (tmp_path / "dist").glob("vla_edge-*.whl")
    tegra = tmp_path / "nv_tegra_release"
    tegra.write_text("# R36 (release), REVISION: 4.0, GCID: 0, BOARD: generic, EABI: aarch64\n")
    no_tegra = {"TEGRA_RELEASE": str(tmp_path / "absent")}

    # 1. install.sh on a Jetson before its set-up: no CPU build goes in.
    first = run("bash", INSTALL, "--prefix", root, "--source", package, env={"TEGRA_RELEASE": str(tegra)})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "this is a Jetson" in first.stdout
    assert installed(python, "vla-edge") == "0.1.0"
    assert installed(python, "onnxruntime") is None
    assert "no onnxruntime yet" in first.stdout

    # 2. The Jetson set-up puts the GPU build in (here the stand-in) and finds its TensorRT provider.
    wheel = standin_wheel(tmp_path)
    setup = run("bash", JETSON, "--prefix", root, "--force", "--ort-wheel", wheel, env={"DEV_ROOT": str(tmp_path)})
    assert setup.returncode == 0, setup.stderr[-3000:]
    assert "TensorrtExecutionProvider" in setup.stdout
    module = next(venv.glob("lib/python3*/site-packages/onnxruntime/__init__.py"))
    assert module.read_text() == STANDIN_INIT

    # 3. install.sh again ("safe at any time"), not told it is a Jetson: it sees the GPU build and keeps it.
    again = run("bash", INSTALL, "--prefix", root, "--source", package, env=no_tegra)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"keeping the installed onnxruntime-gpu {STANDIN_VERSION}" in again.stdout
    assert installed(python, "onnxruntime") is None  # PyPI's CPU build was not put over it
    assert installed(python, "onnxruntime-gpu") == STANDIN_VERSION
    assert module.read_text() == STANDIN_INIT
    providers = run(python, "-c", "import onnxruntime as o; print(o.get_available_providers()[0])")
    assert providers.stdout.strip() == "TensorrtExecutionProvider"

    # 4. The metadata asks for ONNX Runtime only through the [cpu] extra, so the GPU build leaves nothing broken.
    check = run(python, "-m", "pip", "check")
    assert check.returncode == 0 and "No broken requirements" in check.stdout, check.stdout + check.stderr
    requires = run(python, "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('vla-edge')))")
    onnx_reqs = [line for line in requires.stdout.splitlines() if line.startswith("onnxruntime")]
    assert onnx_reqs and all('extra == "cpu"' in line for line in onnx_reqs), requires.stdout


def test_install_plan_takes_the_cpu_build_only_where_no_gpu_build_or_jetson_is(tmp_path: Path):
    root = tmp_path / "root"
    plain = run("bash", INSTALL, "--dry-run", "--prefix", root, "--python", "/usr/bin/python3",
                env={"TEGRA_RELEASE": str(tmp_path / "absent")})
    assert plain.returncode == 0, plain.stderr
    assert "PyPI's CPU build" in plain.stdout
    assert f"-m pip install --quiet --upgrade {REPO_ROOT}[cpu]" in plain.stdout
    tegra = tmp_path / "nv_tegra_release"
    tegra.write_text("# R36 (release), REVISION: 4.0\n")
    jetson = run("bash", INSTALL, "--dry-run", "--prefix", root, "--python", "/usr/bin/python3",
                 env={"TEGRA_RELEASE": str(tegra)})
    assert jetson.returncode == 0, jetson.stderr
    assert "this is a Jetson" in jetson.stdout
    assert f"-m pip install --quiet --upgrade {REPO_ROOT}\n" in jetson.stdout
    assert not root.exists()


def test_without_any_onnxruntime_build_commands_say_so_in_one_line():
    # A venv with vla-edge but no ONNX Runtime yet (a Jetson between install.sh and jetson/setup.sh).
    code = "import sys; sys.modules['onnxruntime'] = None; from vla_edge.cli import main; sys.exit(main(sys.argv[1:]))"
    for args in (["demo"], ["run", "--config", "/nonexistent.toml"]):
        proc = run(sys.executable, "-c", code, *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "vla-edge: error: ONNX Runtime is not installed: pip install 'vla-edge[cpu]' for PyPI's CPU build, "
            "or your board's GPU build (Jetson: deploy/jetson/setup.sh)"]
