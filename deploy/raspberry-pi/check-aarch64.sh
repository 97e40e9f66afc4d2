#!/usr/bin/env bash
# Runs part of vla-edge's test suite as aarch64 code on an x86-64 machine, to check the Raspberry Pi path
# (PyPI's aarch64 wheels: onnxruntime, numpy, pydantic-core, cryptography, psutil, pyzmq) without a board.
#
# How: an arm64 Debian bookworm root file system (debootstrap --foreign: download and unpack only, nothing
# is executed), the aarch64 wheels installed into it by the host's pip (--platform), and the arm64 Python
# run by qemu-aarch64-static with -L pointing at that root. No binfmt_misc registration and no chroot are
# needed, so it works inside an unprivileged-ish container; the price is that the tests cannot start other
# aarch64 programs (those tests are left out below).
#
# Usage: deploy/raspberry-pi/check-aarch64.sh [pytest args...]
#   AARCH64_ROOT   where the arm64 root lives (default /tmp/vla-edge-aarch64; ~400 MB)
#   DEBIAN_MIRROR  default http://deb.debian.org/debian
#   ONNXRUNTIME_SPEC  default "onnxruntime>=1.18,<1.28": the aarch64 wheels 1.28.0 to 1.32.0 crash with
#                  SIGSEGV while importing under Debian 12's qemu-user 7.2 (1.19.2 to 1.27.0 import and run);
#                  that is an emulation limit measured here, not a statement about real Raspberry Pi boards.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
ROOT="${AARCH64_ROOT:-/tmp/vla-edge-aarch64}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ORT_SPEC="${ONNXRUNTIME_SPEC:-onnxruntime>=1.18,<1.28}"
SITE="$ROOT/opt/vla-edge-site-$(echo "$ORT_SPEC" | tr -c 'A-Za-z0-9.' '_')"
HOST_PY="${HOST_PYTHON:-$REPO/.venv/bin/python}"
[ -x "$HOST_PY" ] || HOST_PY=python3

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static debootstrap
fi

if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  echo "== debootstrap (first stage only) arm64 bookworm into $ROOT"
  $SUDO debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 bookworm "$ROOT" "$MIRROR"
  # The first stage unpacks only the required packages; python3 and its libraries are downloaded but left
  # for the second stage, which would need to execute arm64 code. Unpacking them is all Python needs.
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
    $SUDO dpkg-deb -x "$deb" "$ROOT"
  done
fi

run_arm() {  # run the arm64 Python with the root as its library prefix
  QEMU_LD_PREFIX="$ROOT" qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" "$@"
}

echo "== arm64 python: $(run_arm -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])')"

if [ ! -f "$SITE/.done" ]; then
  echo "== aarch64 wheels from PyPI into $SITE"
  $SUDO mkdir -p "$SITE"
  $SUDO "$HOST_PY" -m pip install -q --target "$SITE" --platform manylinux2014_aarch64 \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: \
    "$ORT_SPEC" "numpy>=1.24" "pydantic>=2.6" "psutil>=5.9" "rich>=13" \
    "cryptography>=42" "pyzmq>=25" "msgpack>=1.0" onnx prometheus-client pytest pytest-timeout
  $SUDO touch "$SITE/.done"
fi

cd "$REPO"
export PYTHONPATH="$SITE:$REPO" PYTHONDONTWRITEBYTECODE=1
echo "== machine, onnxruntime providers, and one ONNX model run under arm64"
run_arm - <<'PY'
import platform
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    [helper.make_tensor("w", TensorProto.FLOAT, [4, 2], np.arange(8, dtype=np.float32).tolist())],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
y = sess.run(None, {"x": np.ones((1, 4), np.float32)})[0]
assert y.tolist() == [[12.0, 16.0]], y
print("machine", platform.machine(), "onnxruntime", ort.__version__, ort.get_available_providers(), "MatMul ok")

# The reference bundle's graphs (fp32, int8, int4), when they have been built, with dummy inputs.
from pathlib import Path
types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8}
for path in sorted(Path("models/bundles/reference").glob("*/*.onnx")):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], types[i.type]) for i in s.get_inputs()}
    print("ran", path.parent.name + "/" + path.name, [o.shape for o in s.run(None, feeds)])
PY

echo "== tests under arm64"
if [ $# -eq 0 ]; then
  # The systemd, install-script and CLI-subprocess tests start other programs: left out here.
  set -- tests/deploy/test_deploy_signing.py tests/deploy/test_deploy_telemetry.py \
    tests/deploy/test_deploy_providers.py tests/deploy/test_deploy_bundle_store.py \
    tests/deploy/test_deploy_sdnotify.py -q -p no:cacheprovider
fi
run_arm -m pytest "$@"
