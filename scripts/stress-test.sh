#!/usr/bin/env bash
# The test suite under CPU load: stress-ng hogs twice the core count while the whole suite runs, several times in
# a row (default 3), or several times at once (PARALLEL=N). Proves the suite waits on events, not on time (issue 16
# item 6). Not part of .ci/run.
#
#   bash scripts/stress-test.sh                 # 3 runs of the whole suite, one after another
#   PARALLEL=3 bash scripts/stress-test.sh      # 3 runs at once, each in its own clone of HEAD: each run is a CPU
#                                               # hog for the other two as well (less CPU per run than in a row)
#   RUNS=1 bash scripts/stress-test.sh tests/camera tests/task     # other runs / a subset (pytest arguments)
#
# Needs stress-ng (Debian: apt-get install stress-ng). Each run's pytest output goes to stress-results/run-N.log;
# the summary (run, exit status, minutes, load average at the end) to stress-results/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

RUNS="${RUNS:-3}"
PARALLEL="${PARALLEL:-0}"
if ! command -v stress-ng >/dev/null 2>&1; then
    echo "stress-test: stress-ng is not installed (apt-get install stress-ng)" >&2
    exit 2
fi
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
HOGS=$(( 2 * $(nproc) ))
OUT="$ROOT/stress-results"
mkdir -p "$OUT"

stress-ng --cpu "$HOGS" --cpu-method matrixprod --timeout 0 --quiet &
HOG_PID=$!
trap 'kill "$HOG_PID" 2>/dev/null; wait "$HOG_PID" 2>/dev/null' EXIT
sleep 2  # let the hogs start before the first test

one_run() {  # run number, checkout, session command: runs the suite there, appends its summary line
    local run=$1 dir=$2 session=$3 started status seconds load result cores
    started=$(date +%s)
    # `times` after the suite: the CPU seconds it used (user + sys of the children waited for), for the cores it got
    (cd "$dir" && PYTHONPATH="$dir" $session "$PYTHON" -m pytest -q -p no:cacheprovider "${@:4}"; st=$?
     times > "$OUT/run-$run.cpu"; exit $st) > "$OUT/run-$run.log" 2>&1
    status=$?
    seconds=$(( $(date +%s) - started ))
    cores=$(awk -v w="$seconds" 'NR == 2 { split($1, u, "m"); split($2, s, "m"); sub("s", "", u[2]); sub("s", "", s[2]);
        printf "%.2f", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) / (w > 0 ? w : 1) }' "$OUT/run-$run.cpu")
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    result=$(grep -E "(passed|failed|error)" "$OUT/run-$run.log" | tail -1)
    echo "run $run: exit $status in $(( (seconds + 30) / 60 )) min, $cores cores on average, load average $load: $result" \
        | tee -a "$OUT/summary.txt"
    return "$status"
}

failed=0
if [ "$PARALLEL" -gt 0 ]; then
    RUNS="$PARALLEL"
    echo "stress-ng --cpu $HOGS on $(nproc) cores; $RUNS run(s) at once of: pytest $* ($(git rev-parse --short HEAD))" \
        | tee "$OUT/summary.txt"
    pids=()
    for run in $(seq 1 "$RUNS"); do
        clone="$OUT/clone-$run"
        rm -rf "$clone" && git clone -q "$ROOT" "$clone"
        for venv in "$ROOT"/.venv*; do ln -s "$venv" "$clone/$(basename "$venv")"; done  # the same environments
        # Each run in a session of its own, like another user's job: with autogroup scheduling the kernel shares the
        # CPU between sessions first, so runs started in the hogs' session starve behind any other session's work.
        one_run "$run" "$clone" "setsid -w" "$@" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=$(( failed + 1 )); done
    for run in $(seq 1 "$RUNS"); do rm -rf "$OUT/clone-$run"; done
else
    echo "stress-ng --cpu $HOGS on $(nproc) cores; $RUNS run(s) of: pytest $*" | tee "$OUT/summary.txt"
    for run in $(seq 1 "$RUNS"); do
        one_run "$run" "$ROOT" "" "$@" || failed=$(( failed + 1 ))
    done
fi
echo "$(( RUNS - failed )) of $RUNS runs passed" | tee -a "$OUT/summary.txt"
[ "$failed" -eq 0 ]
