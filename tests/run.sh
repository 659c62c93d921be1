#!/usr/bin/env bash
# The test command (README, CI): install into .venv if needed, then run the whole suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"` or `bash tests/run.sh tests/data/test_split.py`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash cluster/bootstrap.sh train,test
export TF_CPP_MIN_LOG_LEVEL=2 RAY_DEDUP_LOGS=1
exec .venv/bin/python -m pytest "$@"
