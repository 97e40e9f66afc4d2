"""The systemd unit: `systemd-analyze verify` is clean, the offline security exposure is at most 3.0 (base and
with each board drop-in), and ONNX Runtime's CPU provider really runs under MemoryDenyWriteExecute."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vla_edge.paths import REFERENCE_BUNDLE_DIR, REPO_ROOT

UNIT = REPO_ROOT / "systemd" / "vla-edge.service"
DROP_INS = {
    "jetson": REPO_ROOT / "deploy" / "jetson" / "vla-edge-jetson.conf",
    "raspberry-pi": REPO_ROOT / "deploy" / "raspberry-pi" / "vla-edge-raspberry-pi.conf",
}
INSTALLED_EXEC = "/opt/vla-edge/venv/bin/vla-edge"
MAX_EXPOSURE = 3.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd; scripts/dev-setup.sh does it)",
)


def console_script() -> Path:
    """The `vla-edge` entry point of this environment: the program install.sh puts at INSTALLED_EXEC."""
    script = Path(sys.executable).parent / "vla-edge"
    if not script.exists():
        pytest.skip("the vla-edge console script is not installed in this environment (pip install -e .)")
    return script


def staged_unit(tmp_path: Path, drop_in: str | None = None) -> Path:
    """The unit with ExecStart pointing at this environment's console script (verify checks it exists)."""
    text = UNIT.read_text()
    assert text.count(INSTALLED_EXEC) == 1, "ExecStart must name the path install.sh installs"
    unit = tmp_path / "vla-edge.service"
    unit.write_text(text.replace(INSTALLED_EXEC, str(console_script())))
    if drop_in is not None:
        d = tmp_path / "vla-edge.service.d"
        d.mkdir()
        shutil.copy(DROP_INS[drop_in], d / f"{drop_in}.conf")
    return unit


def exposure(unit: Path) -> tuple[float, str]:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match, out
    return float(match.group(1)), out


@needs_systemd_analyze
@pytest.mark.parametrize("drop_in", [None, "jetson", "raspberry-pi"])
def test_verify_is_clean(tmp_path: Path, drop_in: str | None):
    unit = staged_unit(tmp_path, drop_in)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warnings either


@needs_systemd_analyze
@pytest.mark.parametrize("drop_in", [None, "jetson", "raspberry-pi"])
def test_security_exposure_at_most_3(tmp_path: Path, drop_in: str | None):
    score, report = exposure(staged_unit(tmp_path, drop_in))
    print(f"systemd-analyze security exposure ({drop_in or 'base unit'}): {score}")
    assert score <= MAX_EXPOSURE, report


@needs_systemd_analyze
def test_exposure_check_can_fail(tmp_path: Path):
    """The same parser on a unit without hardening reports a high score: the check above is not vacuous."""
    unit = tmp_path / "loose.service"
    unit.write_text(f"[Service]\nExecStart={console_script()} --version\n")
    score, _ = exposure(unit)
    assert score > 8.0


def test_unit_has_the_required_settings():
    text = UNIT.read_text()
    unit_section, service_section = text.split("[Service]")[0], text.split("[Service]")[1].split("[Install]")[0]
    for key in ("StartLimitIntervalSec=", "StartLimitBurst="):
        assert key in unit_section
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "Restart=on-failure", "RestartSec=",
                 "User=vla-edge", "StateDirectory=vla-edge", "ConfigurationDirectory=vla-edge",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/vla-edge", "DeviceAllow=char-video4linux rw",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet=\n",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
                 "MemoryDenyWriteExecute=yes"):
        assert line in service_section, line
    # The only writable path is the state directory.
    writable = re.findall(r"^ReadWritePaths=(.*)$", service_section, re.M)
    assert writable == ["/var/lib/vla-edge"]


PROBE = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("NO_MDWE"); sys.exit(0)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("WX_ALLOWED"); sys.exit(1)
    except PermissionError:
        pass
    import numpy as np, onnxruntime as ort
    from pathlib import Path
    so = ort.SessionOptions(); so.intra_op_num_threads = 2
    for path in sys.argv[1:]:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}[i.type]
            feeds[i.name] = np.ones(shape, dtype)
        outs = sess.run(None, feeds)
        print("RAN", Path(path).parent.name + "/" + Path(path).name, [o.shape for o in outs])
""")


def test_onnxruntime_cpu_runs_with_memory_deny_write_execute(tmp_path: Path):
    """The kernel's PR_SET_MDWE (Linux 6.3+) refuses writable+executable memory exactly like the unit's
    MemoryDenyWriteExecute=yes: ORT must load and run graphs under it, so the unit setting is safe."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    import numpy as np

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32).tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    tiny = tmp_path / "tiny.onnx"
    tiny.write_bytes(model.SerializeToString())
    paths = [str(tiny)]
    # The reference bundle's real graphs (fp32, int8 and int4 MatMulNBits) when they have been built.
    paths += [str(p) for p in sorted(REFERENCE_BUNDLE_DIR.glob("*/*.onnx"))]
    proc = subprocess.run([sys.executable, "-c", PROBE, *paths], capture_output=True, text=True, timeout=240)
    if proc.stdout.startswith("NO_MDWE"):
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("RAN ") == len(paths), proc.stdout
