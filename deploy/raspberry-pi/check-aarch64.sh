#!/usr/bin/env bash
# Checks the Raspberry Pi 5 path on an x86-64 machine: PyPI's aarch64 wheels (onnxruntime, numpy, pydantic-core,
# cryptography, psutil, pyzmq, ...) run as aarch64 code on an emulated Cortex-A76, the Pi 5's core, and must give
# the same actions as x86-64 for the reference bundle's fp32, int8 and int4 variants; then part of the test suite
# runs under the emulator.
#
#   deploy/raspberry-pi/check-aarch64.sh [--cpu MODEL] [--onnxruntime VERSION] [--no-tests] [pytest args...]
#
#   --cpu           the emulated CPU (default cortex-a76, the Pi 5's; `max` enables every feature qemu has,
#                   e.g. SVE2, SME and i8mm, which no Pi has, and ONNX Runtime then picks other kernels)
#   --onnxruntime   the version to check (default: the one pip on a Pi 5 with Python 3.11, Raspberry Pi OS
#                   bookworm, installs today: PyPI's newest aarch64 cp311 wheel)
#   --no-tests      only the machine, the coverage line and the action comparison
#   AARCH64_ROOT    where the arm64 root lives (default /tmp/vla-edge-aarch64; ~600 MB with the wheels)
#   DEBIAN_MIRROR   default http://deb.debian.org/debian
#   QEMU            a qemu-aarch64 binary to use instead of the one this script fetches (see below)
#
# Exit status: 0 when every variant is within its bound (bench/board_parity.py states them) and the tests pass;
# 1 on a mismatch or a failed test; 2 when the check could not run.
#
# How: an arm64 Debian bookworm root file system (debootstrap --foreign: download and unpack only, nothing is
# executed), the aarch64 wheels installed into it by the host's pip (--platform), and the arm64 Python run by
# qemu-user with -L pointing at that root: no binfmt_misc, no chroot, no root needed beyond apt-get. The price:
# tests that start other programs cannot run under it (left out below). qemu-user is qemu 10.0 from Debian's
# bookworm-backports, fetched with apt-get download into the root's parent (nothing installed on the host):
# Debian 12's own qemu-user 7.2 crashes (SIGSEGV) importing onnxruntime 1.28.0 and newer, on every CPU model.
# The x86-64 side runs the same versions of every package (the aarch64 set, pinned), with `python -S`.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
ROOT="${AARCH64_ROOT:-/tmp/vla-edge-aarch64}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CPU="cortex-a76"
ORT_VERSION=""
RUN_TESTS=1
OBSERVATIONS="$REPO/deploy/raspberry-pi/parity-observations.npz"
PY_VERSION="3.11"  # Raspberry Pi OS bookworm's Python (3.11.2), and the arm64 root's

die() { echo "check-aarch64.sh: error: $*" >&2; exit 2; }
say() { echo "== $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) [ $# -ge 2 ] || die "--cpu needs a model (cortex-a76, max, ...)"; CPU="$2"; shift ;;
    --onnxruntime) [ $# -ge 2 ] || die "--onnxruntime needs a version"; ORT_VERSION="$2"; shift ;;
    --no-tests) RUN_TESTS=0 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
  shift
done

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
# The x86-64 side: a Python of the same minor version, with pip (the dev venv's, else any; see find-python.sh).
HOST_PY="$REPO/.venv/bin/python"
if ! "$HOST_PY" -c "import platform, sys; sys.exit(platform.python_version().rsplit('.', 1)[0] != '$PY_VERSION')" 2>/dev/null; then
  HOST_PY="$(bash "$REPO/scripts/find-python.sh" "$PY_VERSION")" || die "the x86-64 side needs a Python $PY_VERSION"
fi
pip_host() { "$HOST_PY" -m pip --disable-pip-version-check "$@"; }

# ---- tools: debootstrap, and a qemu-user that runs current onnxruntime -----------------------------------
if ! command -v debootstrap >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends debootstrap
fi
TOOLS="$(dirname "$ROOT")/$(basename "$ROOT")-tools"
if [ -z "${QEMU:-}" ]; then
  QEMU="$TOOLS/qemu/usr/bin/qemu-aarch64"
  if [ ! -x "$QEMU" ]; then
    say "qemu-user from bookworm-backports into $TOOLS (apt-get download; the host's apt is not changed)"
    mkdir -p "$TOOLS/apt/lists/partial" "$TOOLS/apt/cache/archives/partial"
    echo "deb $MIRROR bookworm-backports main" > "$TOOLS/apt/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$TOOLS/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$TOOLS/apt/lists" -o "Dir::Cache=$TOOLS/apt/cache" -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update -qq
    (cd "$TOOLS" && apt-get "${apt_opts[@]}" download -qq qemu-user/bookworm-backports)
    dpkg-deb -x "$(ls "$TOOLS"/qemu-user_*.deb | head -1)" "$TOOLS/qemu"
  fi
fi
[ -x "$QEMU" ] || die "no qemu-aarch64 at $QEMU"
QEMU_VERSION="$("$QEMU" --version | head -1 | sed 's/^qemu-aarch64 version //; s/ .*//')"

# ---- the arm64 root ----------------------------------------------------------------------------------------
if [ ! -x "$ROOT/usr/bin/python$PY_VERSION" ]; then
  say "debootstrap (first stage only) arm64 bookworm into $ROOT"
  $SUDO debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 bookworm "$ROOT" "$MIRROR"
  # The first stage unpacks only the required packages; python3 and its libraries are downloaded but left
  # for the second stage, which would need to execute arm64 code. Unpacking them is all Python needs.
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
    $SUDO dpkg-deb -x "$deb" "$ROOT"
  done
fi
run_arm() { "$QEMU" -cpu "$CPU" -L "$ROOT" "$ROOT/usr/bin/python$PY_VERSION" -S "$@"; }

# ---- which onnxruntime: the one a Pi installs, unless told otherwise ---------------------------------------
ARM_PLATFORMS=(--platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64)
X86_PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
               --platform manylinux2014_x86_64)
BINARY=(--python-version "$PY_VERSION" --implementation cp --abi "cp${PY_VERSION/./}" --only-binary=:all:)
PI_ORT="$(pip_host install -q --dry-run --ignore-installed --target "$(mktemp -d)" --report - "${ARM_PLATFORMS[@]}" \
  "${BINARY[@]}" --no-deps onnxruntime 2>/dev/null \
  | "$HOST_PY" -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])')" \
  || die "cannot ask PyPI which onnxruntime a Pi installs"
ORT_VERSION="${ORT_VERSION:-$PI_ORT}"

# Runtime dependencies from pyproject.toml (and the [cpu] extra), plus what the tests below import.
mapfile -t REQS < <("$HOST_PY" - "$REPO/pyproject.toml" <<'PY'
import sys
import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for req in project["dependencies"]:
    if "python_version < '3.11'" not in req:
        print(req)
PY
)
TEST_REQS=(onnx prometheus-client pytest pytest-timeout hypothesis)
SITE="$ROOT/opt/site-aarch64-onnxruntime-$ORT_VERSION"
X86_SITE="$ROOT/opt/site-x86_64-onnxruntime-$ORT_VERSION"
if [ ! -f "$SITE/.done" ]; then
  say "aarch64 wheels from PyPI into $SITE"
  rm -rf "$SITE"
  pip_host install -q --no-warn-conflicts --target "$SITE" "${ARM_PLATFORMS[@]}" "${BINARY[@]}" \
    "onnxruntime==$ORT_VERSION" "${REQS[@]}" "${TEST_REQS[@]}"
  touch "$SITE/.done"
fi
if [ ! -f "$X86_SITE/.done" ]; then
  say "the same versions for x86-64 into $X86_SITE"
  mapfile -t PINS < <("$HOST_PY" -S - "$SITE" <<'PY'
import pathlib
import sys

for meta in sorted(pathlib.Path(sys.argv[1]).glob("*.dist-info/METADATA")):
    fields = dict(line.split(": ", 1) for line in meta.read_text().splitlines() if ": " in line and not line[0].isspace())
    print(f"{fields['Name']}=={fields['Version']}")
PY
)
  rm -rf "$X86_SITE"
  pip_host install -q --no-warn-conflicts --no-deps --target "$X86_SITE" "${X86_PLATFORMS[@]}" "${BINARY[@]}" "${PINS[@]}"
  touch "$X86_SITE/.done"
fi

cd "$REPO"
export PYTHONDONTWRITEBYTECODE=1
say "machines"
arm_machine="$(PYTHONPATH="$SITE:$REPO" run_arm -c 'import platform, sys, onnxruntime as o, numpy as n; print(platform.machine(), "Python", platform.python_version(), "onnxruntime", o.__version__, "numpy", n.__version__)' 2>&1 | grep -v cpuid_info)" \
  || { echo "$arm_machine" >&2
       echo "NOT COVERED: qemu $QEMU_VERSION (-cpu $CPU) cannot run onnxruntime $ORT_VERSION; this check says nothing about it" >&2
       exit 2; }
echo "aarch64 (qemu $QEMU_VERSION, -cpu $CPU): $arm_machine"
echo "x86-64: $(PYTHONPATH="$X86_SITE:$REPO" "$HOST_PY" -S -c 'import platform, onnxruntime as o, numpy as n; print(platform.machine(), "Python", platform.python_version(), "onnxruntime", o.__version__, "numpy", n.__version__)')"
if [ "$ORT_VERSION" = "$PI_ORT" ]; then
  echo "covered: onnxruntime $ORT_VERSION is what pip on a Pi 5 (Python $PY_VERSION) installs today"
else
  echo "NOT COVERED: a Pi 5 (Python $PY_VERSION) installs onnxruntime $PI_ORT today; this run checked $ORT_VERSION"
fi
[ "$CPU" = "cortex-a76" ] || echo "NOT A PI: -cpu $CPU is not the Pi 5's core (cortex-a76)"

say "actions: reference bundle fp32/int8/int4, $(basename "$OBSERVATIONS"), fixed noise, x86-64 vs aarch64"
results="$(mktemp -d)"
host_cpu="$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
PYTHONPATH="$X86_SITE:$REPO" "$HOST_PY" -S -m bench.board_parity run "$OBSERVATIONS" "$results/x86_64.json" --cpu "$host_cpu"
PYTHONPATH="$SITE:$REPO" run_arm -m bench.board_parity run "$OBSERVATIONS" "$results/aarch64.json" \
  --cpu "$CPU (qemu $QEMU_VERSION)" 2>&1 | grep -v cpuid_info
status=0
PYTHONPATH="$X86_SITE:$REPO" "$HOST_PY" -S -m bench.board_parity compare "$results/x86_64.json" "$results/aarch64.json" \
  || status=1

if [ "$RUN_TESTS" -eq 1 ]; then
  say "tests under aarch64"
  if [ $# -eq 0 ]; then
    # The systemd, install-script and CLI-subprocess tests start other programs: left out here.
    set -- tests/deploy/test_deploy_signing.py tests/deploy/test_deploy_telemetry.py \
      tests/deploy/test_deploy_providers.py tests/deploy/test_deploy_bundle_store.py \
      tests/deploy/test_deploy_sdnotify.py tests/bench/test_board_parity.py -q -p no:cacheprovider
  fi
  PYTHONPATH="$SITE:$REPO" run_arm -m pytest "$@" || status=1
fi
[ "$status" -eq 0 ] && echo "check-aarch64: passed" || echo "check-aarch64: FAILED" >&2
exit "$status"
