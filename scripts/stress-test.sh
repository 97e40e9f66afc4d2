#!/usr/bin/env bash
# The test suite under CPU load: stress-ng hogs twice the core count while the whole suite runs, several times in
# a row (default 3). Proves the suite waits on events, not on time (issue 16 item 6). Not part of .ci/run.
#
#   bash scripts/stress-test.sh                 # 3 runs of the whole suite
#   RUNS=1 bash scripts/stress-test.sh tests/camera tests/task     # other runs / a subset (pytest arguments)
#
# Needs stress-ng (Debian: apt-get install stress-ng). Each run's pytest output goes to stress-results/run-N.log;
# the summary (run, exit status, minutes, load average at the end) to stress-results/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-3}"
if ! command -v stress-ng >/dev/null 2>&1; then
    echo "stress-test: stress-ng is not installed (apt-get install stress-ng)" >&2
    exit 2
fi
PYTHON="${PYTHON:-.venv/bin/python}"
HOGS=$(( 2 * $(nproc) ))
OUT=stress-results
mkdir -p "$OUT"

stress-ng --cpu "$HOGS" --cpu-method matrixprod --timeout 0 --quiet &
HOG_PID=$!
trap 'kill "$HOG_PID" 2>/dev/null; wait "$HOG_PID" 2>/dev/null' EXIT
sleep 2  # let the hogs start before the first test

echo "stress-ng --cpu $HOGS on $(nproc) cores; $RUNS run(s) of: pytest $*" | tee "$OUT/summary.txt"
failed=0
for run in $(seq 1 "$RUNS"); do
    started=$(date +%s)
    "$PYTHON" -m pytest -q -p no:cacheprovider "$@" > "$OUT/run-$run.log" 2>&1
    status=$?
    minutes=$(( ($(date +%s) - started + 30) / 60 ))
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    result=$(grep -E "(passed|failed|error)" "$OUT/run-$run.log" | tail -1)
    echo "run $run: exit $status in ${minutes} min, load average $load: $result" | tee -a "$OUT/summary.txt"
    [ "$status" -eq 0 ] || failed=$(( failed + 1 ))
done
echo "$(( RUNS - failed )) of $RUNS runs passed" | tee -a "$OUT/summary.txt"
[ "$failed" -eq 0 ]
