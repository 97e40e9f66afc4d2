#!/usr/bin/env bash
# Sets up a development machine: system packages for the browser and unit-file tests, then a venv with
# every extra. Safe to run again. Needs root (or sudo) for apt-get; skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# Network-fault tests between two network namespaces (tests/stream/test_stream_netns.py, hil/netns.py): ip,
# iptables, and libnetfilter-queue + a compiler for the NetfilterQueue Python binding (built from source).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
[ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need+=(libnetfilter-queue-dev)
# The C controller example (examples/c-controller): libzmq and msgpack-c headers.
[ -e /usr/include/zmq.h ] || need+=(libzmq3-dev)
[ -e /usr/include/msgpack.h ] || need+=(libmsgpack-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)  # tests/telemetry: a real Prometheus scrapes the demo
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)  # vla-edge dataset view: Rerun transcodes the episode videos
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "warning: cannot install ${need[*]} (no apt-get); browser/systemd/Prometheus tests will be skipped" >&2
  fi
fi

# PYTHON and VENV choose the interpreter and the venv (.ci/run makes .venv-py310 with Python 3.10 this way).
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
"$VENV/bin/python" -m pip install -q -e '.[netfaults]' \
  || echo "warning: NetfilterQueue did not build (needs gcc and libnetfilter-queue-dev); network-delay cases will not run" >&2
bash scripts/setup-triton.sh || echo "warning: Triton venv not set up; remote-tier tests will be skipped" >&2
echo "dev environment ready: $VENV ($("$VENV/bin/python" -c 'import platform; print("Python", platform.python_version())'))"
