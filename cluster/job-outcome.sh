#!/bin/sh
# The exit code a nightly launcher acts on, read from what Ray reports about a finished, failed job (on stdin:
# `ray job submit`'s output, `ray job status`, or a RayJob's status.message). Used by cluster/nightly.sh (cron)
# and by the launcher of cluster/cron/k8s-cronjob.yaml; both retry 75 only (cluster/README.md, skinray/__init__.py):
#   0 done · 2 usage (fix the command) · 3 the run failed on its data · 75 temporary (storage or cluster down).
#
# 1. The entrypoint's own exit code, as Ray's job supervisor records it in the job's status message: "Job
#    entrypoint command failed with exit code N" (Ray >= 2.6; KubeRay copies the message into status.message).
#    `ray job submit` itself exits 1 for every failed job, whatever the entrypoint returned, so its exit code
#    cannot tell a retryable failure from a final one.
# 2. Else skinray's JSON error line (`--log-format json`: {"kind": "usage"|"data"|"temporary", ...}) in the log.
# 3. Else 75: no entrypoint ran to its end (the cluster was unreachable, the submission failed, the head was
#    lost), which a later attempt resumes.
set -eu
text="$(cat)"
code="$(printf '%s\n' "$text" | sed -n 's/.*Job entrypoint command failed with exit code \(-\{0,1\}[0-9][0-9]*\).*/\1/p' | head -n 1)"
if [ -n "$code" ]; then
    # a negative code is the signal that killed the entrypoint (e.g. -9, OOM): as a shell reports it, 128 + signal
    case "$code" in -*) code=$((128 - code)) ;; esac
    echo "$code"
    exit 0
fi
kind="$(printf '%s\n' "$text" | sed -n 's/.*"kind": *"\([a-z]*\)".*/\1/p' | tail -n 1)"
case "$kind" in
    usage) echo 2 ;;
    data) echo 3 ;;
    *) echo 75 ;;
esac
