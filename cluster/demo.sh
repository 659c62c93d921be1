#!/usr/bin/env bash
# The one-command demo: install into .venv if needed, then synth → prepare → train → evaluate → score → query
# on a local Ray. Arguments go to `skinray demo` (e.g. --weights PATH, --ham10000 DIR, --out DIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash cluster/bootstrap.sh train,test
export TF_CPP_MIN_LOG_LEVEL=2 RAY_DEDUP_LOGS=1
exec .venv/bin/skinray demo "$@"
