#!/usr/bin/env bash
# Prints the path of a Python interpreter of the given version (e.g. 3.10), or fails with one line saying so.
#   scripts/find-python.sh 3.10
# Looks, in order, at pythonX.Y on PATH (when it really runs: a pyenv shim of a version that is not selected
# does not) and at pyenv's newest install of that version (`pyenv latest`). No fixed paths.
set -euo pipefail
want="${1:?usage: find-python.sh X.Y}"
works() { "$1" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$want' else 1)" >/dev/null 2>&1; }

if works "python$want"; then command -v "python$want"; exit 0; fi
if command -v pyenv >/dev/null 2>&1; then
  latest="$(pyenv latest "$want" 2>/dev/null || true)"
  candidate="$(pyenv root)/versions/$latest/bin/python$want"
  if [ -n "$latest" ] && works "$candidate"; then echo "$candidate"; exit 0; fi
fi
echo "find-python.sh: no Python $want here (not on PATH, not installed by pyenv: pyenv install $want)" >&2
exit 1
