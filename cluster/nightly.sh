#!/usr/bin/env bash
# Submit a nightly Ray job and submit it again while it fails for a temporary reason: skinray's exit code 75
# (storage or cluster unavailable), or no entrypoint that ran to its end (the cluster was unreachable). Any other
# failure is final: 2 (usage: fix the command) and 3 (the run failed on its data) fail the same way every time.
#
#   cluster/nightly.sh NAME [ray job submit options...] -- ENTRYPOINT...
#
# NAME prefixes each attempt's submission id (NAME-aN-HHMMSS: Ray wants unique ids). Up to NIGHTLY_ATTEMPTS
# attempts (default 3), NIGHTLY_BACKOFF_SECONDS apart (default 300, doubling). Every attempt runs the same command
# line, so compute the date once, before calling this (a retry after midnight still scores the same night), and
# pass it literally (`--date 2026-11-25`). Re-submitting is safe: a finished run is a no-op, a killed or temporarily
# failed one resumes, a failed one stays failed.
# Exit code: 0 done; the entrypoint's own code when it failed for good (2, 3, 1 for a crash, 128+N for signal N);
# 75 when every attempt failed for a temporary reason. cluster/job-outcome.sh reads the entrypoint's code from Ray's
# report (`ray job submit` itself exits 1 for any failed job).
# `ray` is $RAY_BIN, else the checkout's .venv/bin/ray, else the one on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="${1:?usage: cluster/nightly.sh NAME [ray job submit options...] -- ENTRYPOINT...}"
shift
RAY="${RAY_BIN:-}"
if [[ -z "${RAY}" ]]; then
    RAY=ray
    [[ -x "${here}/../.venv/bin/ray" ]] && RAY="${here}/../.venv/bin/ray"
fi
attempts="${NIGHTLY_ATTEMPTS:-3}"
backoff="${NIGHTLY_BACKOFF_SECONDS:-300}"
out="$(mktemp)"
trap 'rm -f "${out}"' EXIT

for ((attempt = 1; ; attempt++)); do
    id="${name}-a${attempt}-$(date -u +%H%M%S)"
    echo "[nightly] attempt ${attempt} of ${attempts}: submission ${id}" >&2
    rc=0
    "${RAY}" job submit --submission-id "${id}" "$@" 2>&1 | tee "${out}" || rc=$?
    if ((rc == 0)); then
        if grep -q "Job '${id}' was stopped" "${out}"; then  # `ray job submit` exits 0 for a stopped job
            echo "[nightly] ${id} was stopped by hand: not retried" >&2
            exit 1
        fi
        echo "[nightly] ${id} succeeded" >&2
        exit 0
    fi
    code="$({ cat "${out}"; "${RAY}" job status "${id}" 2>&1 || true; } | sh "${here}/job-outcome.sh")"
    if ((code != 75)); then
        echo "[nightly] ${id} failed with exit code ${code}: final, not retried" >&2
        exit "${code}"
    fi
    if ((attempt >= attempts)); then
        echo "[nightly] ${id} failed for a temporary reason (75); no attempts left" >&2
        exit 75
    fi
    wait_s=$((backoff * (1 << (attempt - 1))))
    echo "[nightly] ${id} failed for a temporary reason (75): next attempt in ${wait_s} s" >&2
    sleep "${wait_s}"
done
