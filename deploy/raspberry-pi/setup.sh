#!/usr/bin/env bash
# Raspberry Pi 4/5 set-up for vla-edge (after deploy/install.sh): checks the aarch64 onnxruntime wheel in the
# service's venv, pins the daemon to cores with one ONNX Runtime thread per core, sets the CPU governor.
#
#   sudo deploy/raspberry-pi/setup.sh [--cores LIST] [--governor NAME|keep] [--prefix DIR] [--dry-run] [--force]
#
#   --cores     CPUs for the daemon, e.g. 1-3 (default: all but core 0 on 4+ cores, else all)
#   --governor  cpufreq governor to apply now and at every boot (default performance; "keep" leaves it)
#   --prefix/--dry-run as for install.sh; --force runs on a machine that is not a Raspberry Pi (tests)
# See deploy/raspberry-pi/README.md.
set -euo pipefail

PREFIX=""
DRY_RUN=0
FORCE=0
CORES=""
GOVERNOR="performance"
SYS_ROOT="${SYS_ROOT:-/sys}"
MODEL_FILE="${MODEL_FILE:-/proc/device-tree/model}"
NPROC="${NPROC:-$(nproc)}"

die() { echo "raspberry-pi/setup.sh: error: $*" >&2; exit 2; }
run() { if [ "$DRY_RUN" -eq 1 ]; then echo "+ $*"; else "$@"; fi; }
say() { echo "== $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --cores) [ $# -ge 2 ] || die "--cores needs a list like 1-3"; CORES="$2"; shift ;;
    --governor) [ $# -ge 2 ] || die "--governor needs a name"; GOVERNOR="$2"; shift ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="${2%/}"; shift ;;
    --dry-run) DRY_RUN=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

model="$(tr -d '\0' < "$MODEL_FILE" 2>/dev/null || true)"
case "$model" in
  *"Raspberry Pi"*) say "board: $model" ;;
  *) [ "$FORCE" -eq 1 ] || die "this is not a Raspberry Pi (${model:-no $MODEL_FILE}); use --force to run anyway"
     say "board: ${model:-unknown} (--force)" ;;
esac
[ "$(uname -m)" = "aarch64" ] || [ "$FORCE" -eq 1 ] || \
  die "a 64-bit OS is needed (uname -m is $(uname -m)); install Raspberry Pi OS 64-bit"
if [ -z "$PREFIX" ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo), or use --prefix DIR / --dry-run"
fi

# Core list → count. Accepts "1-3", "0,2,3", "1-2,3".
count_cores() {
  local total=0 part lo hi
  IFS=',' read -ra parts <<< "$1"
  for part in "${parts[@]}"; do
    if [[ "$part" =~ ^([0-9]+)-([0-9]+)$ ]]; then
      lo="${BASH_REMATCH[1]}"; hi="${BASH_REMATCH[2]}"
      [ "$hi" -ge "$lo" ] || return 1
      [ "$hi" -lt "$NPROC" ] || return 1
      total=$((total + hi - lo + 1))
    elif [[ "$part" =~ ^[0-9]+$ ]]; then
      [ "$part" -lt "$NPROC" ] || return 1
      total=$((total + 1))
    else
      return 1
    fi
  done
  echo "$total"
}

if [ -z "$CORES" ]; then
  if [ "$NPROC" -ge 4 ]; then CORES="1-$((NPROC - 1))"; else CORES="0-$((NPROC - 1))"; fi
fi
THREADS="$(count_cores "$CORES")" || die "--cores $CORES is not a list of cores 0..$((NPROC - 1)) (e.g. 1-3)"
say "daemon on cores $CORES, $THREADS ONNX Runtime threads"

VENV="$PREFIX/opt/vla-edge/venv"
say "onnxruntime (aarch64 wheel from PyPI)"
if [ -x "$VENV/bin/python" ]; then
  run "$VENV/bin/python" -c 'import onnxruntime as o, platform; print(platform.machine(), "onnxruntime", o.__version__, o.get_available_providers())'
else
  echo "no venv at $VENV yet: deploy/install.sh installs onnxruntime from PyPI (aarch64 manylinux wheel)"
fi

DROPIN_DIR="$PREFIX/etc/systemd/system/vla-edge.service.d"
say "drop-in $DROPIN_DIR/raspberry-pi.conf"
run install -d -m 0755 "$DROPIN_DIR"
if [ "$DRY_RUN" -eq 1 ]; then
  echo "+ write $DROPIN_DIR/raspberry-pi.conf (CPUAffinity=$CORES, $THREADS threads)"
else
  tmp="$(mktemp "$DROPIN_DIR/.raspberry-pi.conf.XXXXXX")"
  cat > "$tmp" <<EOF
# Written by deploy/raspberry-pi/setup.sh for a ${NPROC}-core board; run it again to change.
[Service]
# The daemon and ONNX Runtime's threads run on these cores, one intra-op thread per core; the others keep
# the kernel's interrupt work (USB camera, network) and the rest of the OS away from the control loop.
CPUAffinity=$CORES
Environment=VLA_EDGE_POLICY__INTRA_OP_THREADS=$THREADS
Nice=-5
EOF
  chmod 0644 "$tmp"
  mv "$tmp" "$DROPIN_DIR/raspberry-pi.conf"
fi

if [ "$GOVERNOR" != "keep" ]; then
  say "cpufreq governor: $GOVERNOR (now and at boot)"
  for gov in "$SYS_ROOT"/devices/system/cpu/cpufreq/policy*/scaling_governor; do
    [ -e "$gov" ] || { echo "no cpufreq policies under $SYS_ROOT (skipped)"; break; }
    if [ "$DRY_RUN" -eq 1 ]; then echo "+ echo $GOVERNOR > $gov"; else echo "$GOVERNOR" > "$gov"; fi
  done
  UNIT_DIR="$PREFIX/etc/systemd/system"
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "+ write $UNIT_DIR/vla-edge-cpu-governor.service"
  else
    install -d -m 0755 "$UNIT_DIR"
    cat > "$UNIT_DIR/vla-edge-cpu-governor.service" <<EOF
[Unit]
Description=CPU frequency governor for vla-edge ($GOVERNOR)
Before=vla-edge.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for g in /sys/devices/system/cpu/cpufreq/policy*/scaling_governor; do echo $GOVERNOR > "\$g"; done'

[Install]
WantedBy=multi-user.target
EOF
  fi
  if [ -z "$PREFIX" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    run systemctl enable vla-edge-cpu-governor.service
  fi
fi

say "throttling"
if command -v vcgencmd >/dev/null 2>&1; then
  state="$(vcgencmd get_throttled 2>/dev/null || true)"
  echo "$state"
  case "$state" in
    *=0x0) echo "no under-voltage or throttling reported" ;;
    *) echo "warning: the firmware reports under-voltage or throttling; see README (power supply, cooling)" >&2 ;;
  esac
else
  echo "vcgencmd not found; vla-edge reads $SYS_ROOT/devices/platform/soc/soc:firmware/get_throttled instead"
fi

if [ -z "$PREFIX" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  run systemctl daemon-reload
fi
echo "Raspberry Pi set-up done."
