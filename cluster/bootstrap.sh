#!/usr/bin/env bash
# Create .venv (Python 3.11) and install skinray with the pinned versions in cluster/constraints.txt.
# Idempotent: a venv whose install stamp matches pyproject.toml + constraints.txt is reused as is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
EXTRAS="${1:-cpu,test}"
stamp_src="$(cat pyproject.toml cluster/constraints.txt | sha256sum | cut -c1-16)-${EXTRAS}"
if [[ -x .venv/bin/python && -f .venv/.skinray-stamp && "$(cat .venv/.skinray-stamp)" == "${stamp_src}" ]]; then
    exit 0
fi
echo "[bootstrap] installing skinray[${EXTRAS}] into .venv with ${PY} ($("${PY}" --version))" >&2
"${PY}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c cluster/constraints.txt -e ".[${EXTRAS}]"
echo "${stamp_src}" > .venv/.skinray-stamp
