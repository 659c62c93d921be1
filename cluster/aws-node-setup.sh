#!/usr/bin/env bash
# Node setup for cluster/aws-gpu.yaml, run by the Ray cluster launcher on every
# node after file_mounts has synced the repository to ~/skinray.
#
#   bash ~/skinray/cluster/aws-node-setup.sh          # head and CPU workers
#   bash ~/skinray/cluster/aws-node-setup.sh --gpu    # GPU workers: skinray[gpu]
#
# Creates ~/venv (Python 3.11, matching the rayproject/ray:*-py311 images and
# the dev venv), installs skinray with the pinned cluster/constraints.txt, and
# makes ~/venv/bin first on PATH for the later launcher commands (the launcher
# runs each command in an interactive bash that sources ~/.bashrc), so
# 'ray start' and job entrypoints ('python jobs/...') use this venv.
# Safe to re-run (ray up re-runs setup on every update).
set -euo pipefail

SRC="${HOME}/skinray"
VENV="${HOME}/venv"
CONSTRAINTS="${SRC}/cluster/constraints.txt"
EXTRA=""

case "${1:-}" in
    --gpu) EXTRA="[gpu]" ;;
    "") ;;
    *) echo "usage: $0 [--gpu]" >&2; exit 2 ;;
esac

[[ -f "${CONSTRAINTS}" ]] || { echo "missing ${CONSTRAINTS}: generate it before 'ray up'" >&2; exit 1; }

# The Deep Learning AMI (Ubuntu 22.04) ships Python 3.10; uv fetches a
# standalone Python 3.11 without touching the system one.
if ! command -v uv >/dev/null 2>&1 && [[ ! -x "${HOME}/.local/bin/uv" ]]; then
    curl -LsSf https://astral.sh/uv/install.sh | sh
fi
UV="$(command -v uv || echo "${HOME}/.local/bin/uv")"
[[ -x "${VENV}/bin/python" ]] || "${UV}" venv --seed --python 3.11 "${VENV}"

grep -q '# skinray-venv' "${HOME}/.bashrc" 2>/dev/null ||
    echo 'export PATH="$HOME/venv/bin:$PATH"  # skinray-venv' >>"${HOME}/.bashrc"

PIP=("${VENV}/bin/python" -m pip install --disable-pip-version-check -c "${CONSTRAINTS}")

# ray[default] brings the dashboard / job server; data and train are used by the
# jobs. boto3 is what the head's autoscaler uses to launch EC2 workers.
"${PIP[@]}" "ray[default,data,train]" boto3 "${SRC}${EXTRA}"

# onnxruntime and onnxruntime-gpu install the same 'onnxruntime' module; with
# both present, whichever was installed last silently wins. Keep only the GPU
# build on GPU nodes.
if [[ -n "${EXTRA}" ]] && "${VENV}/bin/python" -m pip show onnxruntime >/dev/null 2>&1 &&
    "${VENV}/bin/python" -m pip show onnxruntime-gpu >/dev/null 2>&1; then
    "${VENV}/bin/python" -m pip uninstall -y onnxruntime onnxruntime-gpu
    "${PIP[@]}" onnxruntime-gpu
fi
