#!/usr/bin/env bash
# NVIDIA Jetson set-up for vla-edge (after deploy/install.sh): JetPack's onnxruntime-gpu in the service's
# venv, the TensorRT engine cache under the state directory, the drop-in that opens the GPU device nodes.
#
#   sudo deploy/jetson/setup.sh [--ort-wheel FILE|URL] [--ort-index URL] [--skip-ort] [--max-performance]
#                               [--prefix DIR] [--dry-run] [--force]
#
#   --ort-wheel        an onnxruntime-gpu wheel built for this JetPack (Jetson Zoo / NVIDIA)
#   --ort-index        a pip index with such wheels (default for JetPack 6: $JP6_INDEX)
#   --skip-ort         leave the venv's onnxruntime alone
#   --max-performance  nvpmodel -m 0 and jetson_clocks now (steady latency; more power and heat)
#   --prefix/--dry-run as for install.sh; --force runs on a machine that is not a Jetson (tests)
# See deploy/jetson/README.md.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
# NVIDIA's Jetson AI Lab index (JetPack 6, CUDA 12.6) as of this writing; override if it moved.
JP6_INDEX="${JP6_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}"
PREFIX=""
DRY_RUN=0
FORCE=0
SKIP_ORT=0
MAX_PERF=0
ORT_WHEEL=""
ORT_INDEX=""
DEV_ROOT="${DEV_ROOT:-/dev}"
SERVICE_USER="vla-edge"

die() { echo "jetson/setup.sh: error: $*" >&2; exit 2; }
run() { if [ "$DRY_RUN" -eq 1 ]; then echo "+ $*"; else "$@"; fi; }
say() { echo "== $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --ort-wheel) [ $# -ge 2 ] || die "--ort-wheel needs a file or URL"; ORT_WHEEL="$2"; shift ;;
    --ort-index) [ $# -ge 2 ] || die "--ort-index needs a URL"; ORT_INDEX="$2"; shift ;;
    --skip-ort) SKIP_ORT=1 ;;
    --max-performance) MAX_PERF=1 ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="${2%/}"; shift ;;
    --dry-run) DRY_RUN=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

L4T=""
if [ -r /etc/nv_tegra_release ]; then
  L4T="$(sed -n 's/^# R\([0-9]*\) .*/\1/p' /etc/nv_tegra_release)"
fi
if [ -z "$L4T" ] && [ "$FORCE" -eq 0 ]; then
  die "this is not a Jetson (no /etc/nv_tegra_release); use --force to run anyway"
fi
if [ -z "$PREFIX" ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo), or use --prefix DIR / --dry-run"
fi
say "L4T release: ${L4T:-unknown} (R35 = JetPack 5, R36 = JetPack 6)"

VENV="$PREFIX/opt/vla-edge/venv"
STATE="$PREFIX/var/lib/vla-edge"
DROPIN_DIR="$PREFIX/etc/systemd/system/vla-edge.service.d"

say "onnxruntime-gpu with the TensorRT and CUDA providers"
if [ "$SKIP_ORT" -eq 1 ]; then
  echo "skipped (--skip-ort)"
else
  [ -x "$VENV/bin/python" ] || [ "$DRY_RUN" -eq 1 ] || die "$VENV is missing: run deploy/install.sh first"
  if [ -n "$ORT_WHEEL" ]; then
    spec=("$ORT_WHEEL")
  elif [ -n "$ORT_INDEX" ] || [ "$L4T" = "36" ]; then
    spec=(--extra-index-url "${ORT_INDEX:-$JP6_INDEX}" onnxruntime-gpu)
  else
    die "no onnxruntime-gpu source for L4T R${L4T:-?}: pass --ort-wheel (Jetson Zoo) or --ort-index"
  fi
  # The CPU-only wheel and the GPU wheel both provide the `onnxruntime` module: only one may be installed.
  # Removing the CPU wheel also removes the files the two share, so a GPU build that was already there is
  # reinstalled (pip would otherwise call it satisfied and leave it broken).
  force=()
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip show onnxruntime >/dev/null 2>&1; then
    force=(--force-reinstall)
  fi
  run "$VENV/bin/python" -m pip uninstall --yes --quiet onnxruntime || true
  run "$VENV/bin/python" -m pip install --quiet --upgrade "${force[@]}" "${spec[@]}"
  run "$VENV/bin/python" -c 'import onnxruntime as o, sys; p = o.get_available_providers(); print("providers:", p); sys.exit(0 if "TensorrtExecutionProvider" in p else "TensorRT provider missing: is JetPack (libnvinfer) installed?")'
fi

say "TensorRT engine cache $STATE/state/trt-cache"
if [ "$(id -u)" -eq 0 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
  run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE/state/trt-cache"
else
  run install -d -m 0750 "$STATE/state/trt-cache"
fi

say "drop-in $DROPIN_DIR/jetson.conf"
nodes=()
for pattern in "nvmap" "nvhost-*" "nvgpu/igpu0/*" "nvidia*" "nvsciipc"; do
  for node in "$DEV_ROOT"/$pattern; do
    [ -c "$node" ] || [ -f "$node" ] || continue  # -f: a test's stand-in tree
    nodes+=("/dev/${node#"$DEV_ROOT"/}")
  done
done
[ ${#nodes[@]} -gt 0 ] || echo "warning: no GPU device nodes found under $DEV_ROOT; keeping the template's list" >&2
run install -d -m 0755 "$DROPIN_DIR"
if [ "$DRY_RUN" -eq 1 ]; then
  echo "+ write $DROPIN_DIR/jetson.conf (${#nodes[@]} device nodes)"
else
  tmp="$(mktemp "$DROPIN_DIR/.jetson.conf.XXXXXX")"
  if [ ${#nodes[@]} -gt 0 ]; then
    # The template without its example DeviceAllow lines, then the nodes this board has.
    grep -v '^DeviceAllow=' "$REPO/deploy/jetson/vla-edge-jetson.conf" > "$tmp"
    for node in "${nodes[@]}"; do echo "DeviceAllow=$node rw" >> "$tmp"; done
  else
    cat "$REPO/deploy/jetson/vla-edge-jetson.conf" > "$tmp"
  fi
  chmod 0644 "$tmp"
  mv "$tmp" "$DROPIN_DIR/jetson.conf"
fi

if [ "$MAX_PERF" -eq 1 ]; then
  say "maximum performance (until reboot)"
  run nvpmodel -m 0
  run jetson_clocks
fi

if [ -z "$PREFIX" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  run systemctl daemon-reload
fi
echo "Jetson set-up done. First start builds TensorRT engines (minutes); later starts use the cache."
