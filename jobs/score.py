"""Nightly scoring entrypoint for `ray job submit` and cron.

    python jobs/score.py --model URI --input-root s3://bucket/incoming --out s3://bucket/nightly --date 2026-11-25

Reads ``{input-root}/{date}/`` and writes that date's partition. Ray Jobs do not retry; re-submitting the same date
is safe: a finished run is a no-op, an interrupted one scores only what is missing and a failed one stays failed.
``--date`` defaults to today (UTC). Every ``skinray score`` flag is accepted. The doctor's checks for these
arguments (model verified, input and output reachable, a usable GPU with ``--gpu``) run first.
"""

import datetime as dt
import sys

from skinray.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--date" not in args and not any(a.startswith("--date=") for a in args):
        args += ["--date", dt.datetime.now(dt.timezone.utc).date().isoformat()]
    sys.exit(main(["score", *args], preflight=True))
