"""The console is for people: one line per stage or epoch on stderr, library internals only with ``-v``;
``--log-format json`` writes one JSON object per event instead, for schedulers and log pipelines.

Modules log through ``logging.getLogger("skinray.<stage>")``; structured fields go in ``extra={"event": {...}}``.
The settings travel to Ray workers through the environment (``SKINRAY_VERBOSE``, ``SKINRAY_LOG_FORMAT``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any

log = logging.getLogger("skinray")
_format = "text"  # set by setup(): how say() and error() write
_stage = "cli"  # set by setup(): the command, the stage of lines whose logger names none


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"[skinray] {prefix}{record.getMessage()}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        parts = record.name.split(".")
        # skinray.scoring.run → score; an event's own "stage" wins; every line has one
        event["stage"] = parts[1] if parts[0] == "skinray" and len(parts) > 1 else _stage
        extra = getattr(record, "event", None)
        if isinstance(extra, dict):
            event.update({k: v for k, v in extra.items() if k not in event or k == "stage"})
        return json.dumps(event, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is written: a caller (or a test harness) that swaps it after
    ``setup`` never leaves the handler holding a closed stream."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup(verbose: bool = False, fmt: str = "text", stage: str = "cli") -> None:
    """Route skinray's logs to stderr in ``fmt``; quiet other libraries unless ``verbose``. ``stage`` (the command)
    names the stage of lines whose logger does not."""
    from skinray.runtime import quiet_env

    global _format, _stage
    _format, _stage = fmt, stage
    os.environ["SKINRAY_VERBOSE"] = "1" if verbose else "0"
    os.environ["SKINRAY_LOG_FORMAT"] = fmt
    for key, value in quiet_env(verbose).items():
        os.environ.setdefault(key, value)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("skinray")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    if not verbose:
        for name in ("ray", "tensorflow", "absl", "tf2onnx", "matplotlib", "PIL", "botocore", "urllib3"):
            logging.getLogger(name).setLevel(logging.ERROR)


def say(message: str, **fields: Any) -> None:
    """A command's result on stdout: the text for people, or one JSON object with ``fields`` for schedulers."""
    if _format == "json":
        event = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), "level": "info",
                 "logger": "skinray.cli", "stage": _stage, "message": message}
        print(json.dumps(event | fields, default=str))
    else:
        print(message)


def error(message: str, fmt: str | None = None, kind: str = "usage", run_id: str | None = None,
          stage: str | None = None) -> None:
    """An error: one line (``skinray: error: ...``), or one JSON object (``fmt``, else as set up) that says when,
    in which stage, of which ``kind`` (usage, data, temporary: what a retry would do) and for which run."""
    if (fmt or _format) == "json":
        event = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), "level": "error",
                 "logger": "skinray", "stage": stage or _stage, "kind": kind, "run_id": run_id, "message": message}
        print(json.dumps(event), file=sys.stderr)
    else:
        print(f"skinray: error: {message}", file=sys.stderr)
