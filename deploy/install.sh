#!/usr/bin/env bash
# Installs vla-edge as a systemd service on this board. Safe to run again: existing config, keys, state and
# bundles are kept; the package, unit and docs are refreshed.
#
#   sudo deploy/install.sh [--dry-run] [--prefix DIR] [--source DIR|WHEEL] [--python PY] [--skip-venv] [--enable]
#
#   --dry-run    print what would be done, change nothing
#   --prefix     install under DIR instead of / (tests, image building); the service user, systemctl and
#                file ownership are then left out unless DIR is /
#   --source     what pip installs (default: this checkout); a wheel file works too
#   --python     interpreter for the venv (default python3, 3.10+)
#   --skip-venv  do not create/update /opt/vla-edge/venv (e.g. the board scripts install onnxruntime first)
#   --enable     also `systemctl enable vla-edge` (it starts at boot; start it now with systemctl start)
#
# ONNX Runtime: an installed GPU (or other accelerator) build, e.g. JetPack's onnxruntime-gpu, is kept, never
# replaced; on a Jetson without one, deploy/jetson/setup.sh installs it; anywhere else PyPI's CPU wheel comes
# with the package's [cpu] extra. `pip check` runs at the end.
#
# Afterwards: the board's set-up (deploy/jetson/setup.sh or deploy/raspberry-pi/setup.sh), a trusted key and a
# signed bundle (docs/deployment.md), then `systemctl start vla-edge`.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=""
DRY_RUN=0
SOURCE="$REPO"
PYTHON="python3"
SKIP_VENV=0
ENABLE=0
SERVICE_USER="vla-edge"
TEGRA_RELEASE="${TEGRA_RELEASE:-/etc/nv_tegra_release}"  # present on every Jetson (L4T); tests point it elsewhere

die() { echo "install.sh: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="${2%/}"; shift ;;
    --prefix=*) PREFIX="${1#*=}"; PREFIX="${PREFIX%/}" ;;
    --source) [ $# -ge 2 ] || die "--source needs a path"; SOURCE="$2"; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON="$2"; shift ;;
    --skip-venv) SKIP_VENV=1 ;;
    --enable) ENABLE=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

# Host-wide actions (accounts, systemctl, ownership) only for a real install.
HOST=0
[ -z "$PREFIX" ] && HOST=1
if [ "$HOST" -eq 1 ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo deploy/install.sh), or use --prefix DIR / --dry-run"
fi

ETC="$PREFIX/etc/vla-edge"
STATE="$PREFIX/var/lib/vla-edge"
OPT="$PREFIX/opt/vla-edge"
UNIT_DIR="$PREFIX/etc/systemd/system"

run() {
  if [ "$DRY_RUN" -eq 1 ]; then echo "+ $*"; else "$@"; fi
}
say() { echo "== $*"; }

# Installed distributions that provide the `onnxruntime` module, "name version" per line (CPU and GPU builds
# alike; onnxruntime-extensions and the like have modules of their own and are not listed).
ort_builds() {  # python
  "$1" - <<'PY' 2>/dev/null || true
import importlib.metadata as md
import re

for dist in md.distributions():
    if any(str(f).replace("\\", "/") == "onnxruntime/__init__.py" for f in (dist.files or [])):
        print(re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower(), dist.version)
PY
}

# install -d with ownership when we can set it (root, real install or prefix with the user present).
make_dir() {  # mode owner group path
  local mode="$1" owner="$2" group="$3" path="$4"
  if [ "$(id -u)" -eq 0 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
    run install -d -m "$mode" -o "$owner" -g "$group" "$path"
  else
    run install -d -m "$mode" "$path"
  fi
}

say "service user $SERVICE_USER"
if [ "$HOST" -eq 1 ]; then
  if id "$SERVICE_USER" >/dev/null 2>&1; then
    echo "exists"
  else
    run useradd --system --user-group --home-dir /var/lib/vla-edge --no-create-home \
      --shell /usr/sbin/nologin --comment "vla-edge policy runtime" "$SERVICE_USER"
  fi
  # Cameras (and Jetson GPU nodes) belong to group video.
  if getent group video >/dev/null; then run usermod -a -G video "$SERVICE_USER"; fi
else
  echo "skipped (--prefix): create it on the target with useradd --system --user-group $SERVICE_USER"
fi

say "directories"
make_dir 0750 root "$SERVICE_USER" "$ETC"
make_dir 0750 root "$SERVICE_USER" "$ETC/keys"
make_dir 0755 root root "$ETC/trusted-keys"
make_dir 0750 "$SERVICE_USER" "$SERVICE_USER" "$STATE"
for sub in state dataset bundles tasks; do
  make_dir 0750 "$SERVICE_USER" "$SERVICE_USER" "$STATE/$sub"
done
make_dir 0755 root root "$OPT"
make_dir 0755 root root "$OPT/docs"
make_dir 0755 root root "$UNIT_DIR"

say "config $ETC/vla-edge.toml"
if [ -e "$ETC/vla-edge.toml" ]; then
  echo "kept (existing file is never overwritten; the current template is $REPO/deploy/vla-edge.toml.template)"
else
  run install -m 0640 "$REPO/deploy/vla-edge.toml.template" "$ETC/vla-edge.toml"
  if [ "$(id -u)" -eq 0 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
    run chown "root:$SERVICE_USER" "$ETC/vla-edge.toml"
  fi
fi

say "python environment $OPT/venv"
if [ "$SKIP_VENV" -eq 1 ]; then
  echo "skipped (--skip-venv)"
else
  if [ ! -x "$OPT/venv/bin/python" ]; then
    # Board vendors ship some wheels (JetPack's onnxruntime-gpu) system-wide; the venv may see them.
    run "$PYTHON" -m venv --system-site-packages "$OPT/venv"
  fi
  VENV_PY="$OPT/venv/bin/python"
  [ -x "$VENV_PY" ] || VENV_PY="$PYTHON"  # dry run before the venv exists: what the system Python sees
  # Which ONNX Runtime. Every build (onnxruntime, onnxruntime-gpu, JetPack's, ...) installs the same module
  # `onnxruntime`, so pip cannot tell that a GPU build satisfies a dependency on the CPU one: installing
  # onnxruntime next to it overwrites its files and the providers silently become CPU only.
  builds="$(ort_builds "$VENV_PY")"
  gpu_build="$(printf '%s\n' "$builds" | awk 'NF && $1 != "onnxruntime" {print $1 " " $2; exit}')"
  extra="[cpu]"
  if [ -n "$gpu_build" ]; then
    extra=""
    echo "onnxruntime: keeping the installed $gpu_build (vla-edge goes in without PyPI's CPU build)"
    if printf '%s\n' "$builds" | awk '$1 == "onnxruntime" {found = 1} END {exit !found}'; then
      echo "warning: the CPU build onnxruntime is installed too and shares its files; reinstall the GPU build" \
        "(deploy/jetson/setup.sh does) or: pip uninstall onnxruntime && pip install --force-reinstall ${gpu_build%% *}" >&2
    fi
  elif [ -r "$TEGRA_RELEASE" ]; then
    extra=""
    echo "onnxruntime: this is a Jetson ($TEGRA_RELEASE); deploy/jetson/setup.sh installs onnxruntime-gpu"
  else
    echo "onnxruntime: PyPI's CPU build (the [cpu] extra)"
  fi
  run "$OPT/venv/bin/python" -m pip install --quiet --upgrade pip
  run "$OPT/venv/bin/python" -m pip install --quiet --upgrade "$SOURCE$extra"
  if [ "$DRY_RUN" -eq 0 ]; then
    if "$OPT/venv/bin/python" -m pip check; then :; else
      echo "warning: pip check found the conflicts above in $OPT/venv" >&2
    fi
    "$OPT/venv/bin/python" - <<'PY' || echo "no onnxruntime yet: on a Jetson run deploy/jetson/setup.sh next"
try:
    import onnxruntime as ort
except ImportError:
    raise SystemExit(1) from None
print(f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}")
PY
  fi
fi

say "unit $UNIT_DIR/vla-edge.service"
run install -m 0644 "$REPO/systemd/vla-edge.service" "$UNIT_DIR/vla-edge.service"
run install -m 0644 "$REPO/docs/deployment.md" "$OPT/docs/deployment.md"

if [ "$HOST" -eq 1 ]; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
    [ "$ENABLE" -eq 1 ] && run systemctl enable vla-edge.service
  else
    echo "systemd is not running here: run 'systemctl daemon-reload' on the target"
  fi
fi

cat <<EOF

vla-edge installed${PREFIX:+ under $PREFIX}$([ "$DRY_RUN" -eq 1 ] && echo " (dry run: nothing was changed)").
Next:
  1. board set-up:      deploy/jetson/setup.sh  or  deploy/raspberry-pi/setup.sh
  2. stream keys:       $OPT/venv/bin/vla-edge keys generate --dir /etc/vla-edge/keys
  3. trusted key:       copy your bundle-signing.pub to /etc/vla-edge/trusted-keys/
  4. a signed bundle:   $OPT/venv/bin/vla-edge bundle install BUNDLE_DIR --config /etc/vla-edge/vla-edge.toml
  5. tasks:             drop task files (task_id and steps) into /var/lib/vla-edge/tasks/; the daemon runs them in order
  6. start:             systemctl enable --now vla-edge && $OPT/venv/bin/vla-edge status
EOF
