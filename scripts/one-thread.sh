#!/usr/bin/env bash
# Run a foreground command next to a background `hifiedit train` job without slowing it down:
# the training job runs on one thread (--threads 1) and this command gets the other core
# (OMP_NUM_THREADS=1). Pausing the job instead (SIGSTOP) raced between concurrent users.
#   scripts/one-thread.sh .venv/bin/python -m pytest tests/test_x.py
export OMP_NUM_THREADS=1
exec "$@"
