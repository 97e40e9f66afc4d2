#!/usr/bin/env bash
# Makes .venv-lerobot/: LeRobot in its own environment, for `vla-edge import lerobot` (export + parity against
# LeRobot's own policies) and for reading back what the recorder writes with LeRobot's own LeRobotDataset.
#
# Why its own venv: LeRobot pins its own torch (0.4.x: torch<2.11) and transformers; the runtime never imports
# torch. LeRobot 0.4.4 is the current release for Python 3.11 (0.6.x needs Python >= 3.12; same dataset format v3.0).
# Nothing here reaches a model hub: policies are built from their config classes with random weights.
# Safe to run again. Override the interpreter with LEROBOT_PYTHON=/path/to/python3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-lerobot
LEROBOT_VERSION="${LEROBOT_VERSION:-0.4.4}"

find_python() {
  if [ -n "${LEROBOT_PYTHON:-}" ]; then echo "$LEROBOT_PYTHON"; return; fi
  for cand in python3.11 "$(command -v pyenv >/dev/null 2>&1 && pyenv root)/versions/3.11"*/bin/python3.11 \
              /root/.pyenv/versions/3.11*/bin/python3.11 /usr/bin/python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$cand"; return
    fi
  done
  echo "setup-lerobot: no Python 3.11 found; set LEROBOT_PYTHON" >&2; exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python)"
  "$PY" -m venv "$VENV"
fi
echo '*' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install -q --upgrade pip
# One resolve: LeRobot with the policies vla-edge imports, the ONNX export tools, and vla-edge itself (manifest,
# signing and ONNX Runtime parity run in this environment).
"$VENV/bin/python" -m pip install -q "lerobot[dataset,diffusion,smolvla,pi]==${LEROBOT_VERSION}" \
  "onnx>=1.16" "onnxscript>=0.2" "onnx_ir>=0.1" -e .
"$VENV/bin/python" -c 'import lerobot, torch, onnxruntime, vla_edge.bundle; print("lerobot", lerobot.__version__ if hasattr(lerobot, "__version__") else "?", "torch", torch.__version__)'
echo "lerobot environment ready: $VENV"
