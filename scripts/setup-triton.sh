#!/usr/bin/env bash
# Makes .venv-triton/: the Python environment that runs the remote tier's Triton server (PyTriton).
#
# Why a second venv: PyTriton's Python-backend stub fails under a pyenv-built Python 3.11.7
# ('_thread.RLock' object has no attribute '_recursion_count' in multiprocessing's resource tracker) and works
# under Debian's /usr/bin/python3. The daemon (client side) stays in .venv with tritonclient[grpc].
# Safe to run again. Override the interpreter with TRITON_PYTHON=/path/to/python3.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${TRITON_PYTHON:-/usr/bin/python3}"
VENV=.venv-triton
PYTRITON_VERSION="${PYTRITON_VERSION:-0.7.0}"

if [ ! -x "$PY" ]; then
  echo "setup-triton: $PY not found; install Debian's python3 (apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# The venv lives in the checkout; keep git from ever seeing it.
echo '*' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install -q --upgrade pip
# One resolve for both: PyTriton 0.7 needs numpy<2, and the server runs the bundle with vla_edge's own
# PolicyRunner (onnxruntime, numpy, opencv, pydantic), so pip must pick versions that suit both.
"$VENV/bin/python" -m pip install -q "nvidia-pytriton==${PYTRITON_VERSION}" "numpy<2" -e '.[cpu]'
"$VENV/bin/python" -c 'import pytriton, vla_edge.policy' >/dev/null
echo "triton environment ready: $VENV"
