#!/usr/bin/env bash
# Run a command while any background `hifiedit train` job is paused (SIGSTOP/SIGCONT), so that
# the two do not fight over this machine's 2 cores (OpenMP threads collapse under contention).
#   scripts/paused.sh .venv/bin/python -m pytest tests/test_x.py
pids=$(pgrep -f "hifiedit train" || true)
[ -n "$pids" ] && kill -STOP $pids
trap '[ -n "$pids" ] && kill -CONT $pids 2>/dev/null' EXIT
"$@"
