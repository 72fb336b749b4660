#!/usr/bin/env bash
# The standard suite (the efficacy study) in the background, from a git worktree of the committed
# HEAD: edits to this checkout never change the code a running study imports. Its run folders and
# log land in this checkout (saved_models/benchmarks_standard/).
#
#   bash scripts/study.sh start    # worktree at HEAD, refuse if finished cells would retrain, launch
#   bash scripts/study.sh stop     # kill it; the running cell resumes from its last epoch next start
#   bash scripts/study.sh status   # running or not, the last finished cells
#   bash scripts/study.sh commit   # commit the cells that finished (results.json) and the tuning records
#   bash scripts/study.sh plan     # what a start on this checkout's code would still train, in order
#
# While the file /tmp/pause_study exists no new cell starts (e.g. to time something in quiet).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORKTREE=${STUDY_WORKTREE:-$ROOT/../study}
SUITE_DIR=saved_models/benchmarks_standard
LOG=$ROOT/$SUITE_DIR/study.log
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
MARKER=keras-kd-study  # in the process's argv, to find it again

# Runs benchmarks.run from the worktree's code with this checkout as the working directory.
suite() {
    (cd "$ROOT" && TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="" "$PYTHON" -c "
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks import run
assert run.__file__.startswith(sys.argv[1]), run.__file__
run.main(sys.argv[3:])
" "$WORKTREE" "$MARKER" "$@")
}

running() { pgrep -f -- "$MARKER" > /dev/null; }

case "${1:-status}" in
start)
    if running; then
        echo "the study is already running (bash scripts/study.sh stop first)" >&2
        exit 1
    fi
    head=$(git -C "$ROOT" rev-parse HEAD)
    if [ -e "$WORKTREE/.git" ]; then
        git -C "$WORKTREE" checkout -q -f --detach "$head"
    else
        git -C "$ROOT" worktree add -q --detach "$WORKTREE" "$head"
    fi
    suite --suite standard --check 2>&1 | grep -v "^I0000\|^WARNING" || {
        echo "not started: the code at $head would train finished cells again (listed above)" >&2
        exit 1
    }
    mkdir -p "$(dirname "$LOG")"
    echo "[study.sh] $(date -u +%FT%TZ) start at $head" >> "$LOG"
    (suite --suite standard --pause-file /tmp/pause_study --docs /tmp/study_results.md >> "$LOG" 2>&1 &)
    echo "started at $head; log: $LOG"
    ;;
stop)
    if running; then
        pkill -f -- "$MARKER"
        echo "[study.sh] $(date -u +%FT%TZ) stopped" >> "$LOG"
        echo "stopped; the running cell resumes from its last epoch at the next start"
    else
        echo "not running"
    fi
    ;;
status)
    if running; then echo "running"; else echo "not running"; fi
    grep -a "^\[standard\]" "$LOG" 2>/dev/null | tail -n 5 || true
    ;;
plan)
    (cd "$ROOT" && TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="" "$PYTHON" -m benchmarks.run --suite standard --plan \
        2>&1 | grep -v "^I0000\|^WARNING")
    ;;
commit)
    cd "$ROOT"
    added=0
    for folder in "$SUITE_DIR"/*/*/; do
        if [ -f "$folder/results.json" ] && [ -n "$(git status --porcelain -- "$folder")" ]; then
            git add -- "$folder"
            added=$((added + 1))
        fi
    done
    git add -- "$SUITE_DIR"/tuning/*.json 2>/dev/null || true
    if git diff --cached --quiet -- "$SUITE_DIR"; then
        echo "nothing finished since the last commit"
    else
        git commit -q -m "Study: $added finished cell(s)" -- "$SUITE_DIR"
        git log --oneline -1
    fi
    ;;
*)
    echo "usage: bash scripts/study.sh start|stop|status|commit|plan" >&2
    exit 2
    ;;
esac
