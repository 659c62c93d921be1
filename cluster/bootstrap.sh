#!/usr/bin/env bash
# Create .venv (Python 3.11) and install skinray with the pinned versions of cluster/constraints.txt.
# Idempotent: a venv whose install stamp matches pyproject.toml + the constraints file + the extras is reused as is.
#
#   bash cluster/bootstrap.sh              # train,test: everything on CPU (what tests/run.sh and cluster/demo.sh use)
#   bash cluster/bootstrap.sh ""           # the base install: scoring with ONNX Runtime only, no TensorFlow
#   bash cluster/bootstrap.sh gpu          # a GPU node: train,gpu from cluster/constraints-gpu.txt, then only
#                                          # onnxruntime-gpu (the base install's onnxruntime is swapped out)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
EXTRAS="${1-train,test}"
CONSTRAINTS=cluster/constraints.txt
gpu=0
if [[ ",${EXTRAS}," == *",gpu,"* ]]; then
    gpu=1
    CONSTRAINTS=cluster/constraints-gpu.txt
    [[ ",${EXTRAS}," == *",train,"* ]] || EXTRAS="train,${EXTRAS}"  # the GPU builds serve training
fi
stamp_src="$(cat pyproject.toml "${CONSTRAINTS}" | sha256sum | cut -c1-16)-${EXTRAS}"
if [[ -x .venv/bin/python && -f .venv/.skinray-stamp && "$(cat .venv/.skinray-stamp)" == "${stamp_src}" ]]; then
    exit 0
fi
target="."
[[ -n "${EXTRAS}" ]] && target=".[${EXTRAS}]"
echo "[bootstrap] installing skinray${EXTRAS:+[${EXTRAS}]} into .venv with ${PY} ($("${PY}" --version))" >&2
"${PY}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c "${CONSTRAINTS}" -e "${target}"
if (( gpu )); then
    # onnxruntime (the base install's) and onnxruntime-gpu ship the same module: remove both, put back only the GPU
    # build (pyproject.toml, the `gpu` extra; cluster/Dockerfile's gpu target does the same)
    .venv/bin/python -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu
    .venv/bin/python -m pip install --quiet --no-deps -c "${CONSTRAINTS}" onnxruntime-gpu
fi
echo "${stamp_src}" > .venv/.skinray-stamp
