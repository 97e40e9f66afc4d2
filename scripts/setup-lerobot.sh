#!/usr/bin/env bash
# Makes .venv-lerobot/: LeRobot in its own environment, for `vla-edge import lerobot` (export + parity against
# LeRobot's own policies) and for reading back what the recorder writes with LeRobot's own LeRobotDataset.
#
# Why its own venv: LeRobot pins its own torch (0.6.x: torch<2.12) and transformers; the runtime never imports
# torch. Why LeRobot 0.6.1 on Python 3.12 and not 0.4.4 (the newest for Python 3.11): 0.4.x runs π0/π0.5 only with
# a patched transformers that exists only as a GitHub branch (fix/lerobot_openpi; stock transformers 4.57 raises
# "An incorrect transformer version is used" when a PI0Policy is built), and GitHub is not reachable here;
# 0.5+ runs them on stock transformers 5.x from PyPI. Same dataset format (v3.0) and checkpoint layout
# (config.json + model.safetensors + policy_{pre,post}processor*.json/.safetensors) as 0.4.x.
# Nothing here reaches a model hub: policies are built from their config classes with random weights.
# Safe to run again. Override the interpreter with LEROBOT_PYTHON=/path/to/python3.12.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-lerobot
LEROBOT_VERSION="${LEROBOT_VERSION:-0.6.1}"
PY_MINOR=12  # LeRobot 0.5+ needs Python >= 3.12

find_python() {
  if [ -n "${LEROBOT_PYTHON:-}" ]; then echo "$LEROBOT_PYTHON"; return; fi
  local root
  root="$(command -v pyenv >/dev/null 2>&1 && pyenv root || echo /root/.pyenv)"
  for cand in python3.$PY_MINOR "$root"/versions/3.$PY_MINOR*/bin/python3.$PY_MINOR /usr/bin/python3.$PY_MINOR \
              python3.13 "$root"/versions/3.13*/bin/python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import sys; sys.exit(sys.version_info[:2] < (3, $PY_MINOR))" 2>/dev/null; then
      echo "$cand"; return
    fi
  done
  echo "setup-lerobot: no Python >= 3.$PY_MINOR found (LeRobot $LEROBOT_VERSION needs it); set LEROBOT_PYTHON" >&2; exit 1
}

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c "import sys; sys.exit(sys.version_info[:2] < (3, $PY_MINOR))"; then
  echo "setup-lerobot: $VENV has Python < 3.$PY_MINOR (an older setup, LeRobot 0.4.x): making it again" >&2
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python)"
  "$PY" -m venv "$VENV"
fi
echo '*' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install -q --upgrade pip
# One resolve: LeRobot with the policies vla-edge imports, the ONNX export tools, and vla-edge itself (manifest,
# signing and ONNX Runtime parity run in this environment; onnxruntime comes with the [cpu] extra).
"$VENV/bin/python" -m pip install -q "lerobot[dataset,diffusion,smolvla,pi]==${LEROBOT_VERSION}" "tokenizers>=0.20" \
  "onnx>=1.16" "onnxscript>=0.2" "onnx_ir>=0.1" -e ".[cpu]"
"$VENV/bin/python" -c 'import lerobot, torch, onnxruntime, vla_edge.bundle; print("lerobot", lerobot.__version__ if hasattr(lerobot, "__version__") else "?", "torch", torch.__version__)'
echo "lerobot environment ready: $VENV"
