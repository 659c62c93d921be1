"""``OUT/runs/<run_id>/``: one scoring run's record and its lease (this module writes and reads both).

* ``run.json`` is the record of one *night* of one input and model: it claims the run id for that date, input
  and model when the first submission starts (``status: running``) and says how the latest submission ended
  (``succeeded``; ``incomplete`` when some images could not be read yet and wait for the next submission;
  ``failed`` with the reason), with the list of ``submissions`` (one per commit). A run id is never reused for
  another date, input or model, and a failed night stays failed when re-submitted (a new run id re-scores).
* ``lease.json`` names the process scoring the run and is renewed while it works, so a second process started
  on the same run id fails at once with one line instead of scoring everything again; a lease whose owner died
  (same host, process gone) or stopped renewing (``score.lease_seconds``) is taken over — that is how a killed run
  resumes.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

from skinray import DataError, SkinrayError
from skinray.io import storage
from skinray.io.storage import StorageConfig


def _top_level(cls: type, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The dataclass fields of ``cls`` that ``record`` holds at its top level (``extra`` wins)."""
    names = {f.name for f in fields(cls)} - {"record"}
    return {**{k: record[k] for k in names if k in record}, **extra}


@dataclass(frozen=True)
class RunRecord:
    """``score``: one scoring run, as ``runs/<run_id>/run.json`` records it."""

    run_id: str
    status: str  # running | succeeded | failed
    scored_date: str | None = None
    table: str | None = None
    rows: int = 0
    scored: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    flagged: int | None = None
    table_version: int | None = None
    wall_seconds: float | None = None
    images_per_second_steady: float | None = None
    images_per_second_overall: float | None = None
    pngs: list[str] = field(default_factory=list)
    already_complete: bool = False  # this call found the run committed and did nothing
    record: dict[str, Any] = field(default_factory=dict, repr=False)  # run.json

    @classmethod
    def from_record(cls, record: dict[str, Any], already_complete: bool = False) -> RunRecord:
        return cls(**_top_level(cls, record, already_complete=already_complete), record=record)


RUN_FILE = "run.json"
LEASE_FILE = "lease.json"
RUNS_DIR = "runs"
CONFIRM_DELAY_S = 0.2


def run_dir(out: str, run_id: str) -> str:
    return storage.join(storage.normalize(out), RUNS_DIR, run_id)


def read(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> dict[str, Any] | None:
    uri = storage.join(run_dir(out, run_id), RUN_FILE)
    if not storage.exists(uri, storage_cfg):
        return None
    try:
        record = storage.read_json(uri, storage_cfg)
    except ValueError as exc:
        raise SkinrayError(f"{uri} is not valid JSON ({exc}); move it away to re-use run id {run_id}") from exc
    return record if isinstance(record, dict) else None


def write(out: str, record: dict[str, Any], storage_cfg: StorageConfig | None = None) -> None:
    storage.write_json(storage.join(run_dir(out, record["run_id"]), RUN_FILE), record, storage_cfg)


def claim(out: str, run_id: str, scored_date: str, input_uri: str, model_id: str,
          storage_cfg: StorageConfig | None = None) -> dict[str, Any] | None:
    """The existing record of this night, after checking it is this night; None when the run id is new.

    Refuses (one line) a run id used for another date, input or model, and re-raises a failed night's reason
    (:class:`DataError`: retrying cannot help). A folder that gained images since is the same night.
    """
    record = read(out, run_id, storage_cfg)
    if record is None:
        return None
    if record.get("scored_date") != scored_date:
        raise SkinrayError(f"run id {run_id} was used for {record.get('scored_date')}, not {scored_date}: "
                           "choose another --run-id", run_id=run_id)
    if storage.normalize(str(record.get("input"))) != storage.normalize(input_uri) or \
            record.get("model_id") != model_id:
        raise SkinrayError(f"run id {run_id} was used for other input or another model "
                           f"({record.get('input')}, model {record.get('model_id')}): choose another --run-id",
                           run_id=run_id)
    if record.get("status") == "failed":
        raise DataError(f"run {run_id} failed: {record.get('failure_reason')} "
                        "(a failed run stays failed; a new --run-id scores again)", run_id=run_id)
    return record


# --- lease ---------------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(lease: dict[str, Any], lease_seconds: float) -> bool:
    if time.time() - float(lease.get("renewed", 0)) > lease_seconds:
        return True
    return lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", -1)))


class Lease:
    """This process's claim on a run while it scores and commits it."""

    def __init__(self, out: str, run_id: str, lease_seconds: float, storage_cfg: StorageConfig | None) -> None:
        self.uri = storage.join(run_dir(out, run_id), LEASE_FILE)
        self.run_id, self.seconds, self.storage_cfg = run_id, lease_seconds, storage_cfg
        self.record = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.time(), "renewed": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _current(self) -> dict[str, Any] | None:
        try:
            return storage.read_json(self.uri, self.storage_cfg) if storage.exists(self.uri, self.storage_cfg) else None
        except (ValueError, SkinrayError):
            return None

    def acquire(self) -> None:
        held = self._current()
        if held and held.get("owner") != self.record["owner"] and not _stale(held, self.seconds):
            age = time.time() - float(held.get("renewed", 0))
            raise SkinrayError(f"run {self.run_id} is being scored by another process (host {held.get('host')}, "
                               f"pid {held.get('pid')}, lease renewed {age:.0f} s ago): wait for it to finish, "
                               "or use another --run-id")
        storage.write_json(self.uri, self.record, self.storage_cfg)
        time.sleep(CONFIRM_DELAY_S)  # two starts at the same moment: the last writer wins, the other steps back
        self.check()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise when another process has taken the run over (only when this one stalled past the lease)."""
        held = self._current()
        if held is None or held.get("owner") != self.record["owner"]:
            self.lost = True
            raise SkinrayError(f"run {self.run_id} was taken over by another process (host "
                               f"{(held or {}).get('host')}, pid {(held or {}).get('pid')}); this one stops")

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            held = self._current()
            if held is not None and held.get("owner") != self.record["owner"]:
                self.lost = True
                return
            self.record["renewed"] = time.time()
            try:
                storage.write_json(self.uri, self.record, self.storage_cfg)
            except SkinrayError:
                continue  # a storage hiccup: try again at the next beat

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._current()
        if held is not None and held.get("owner") == self.record["owner"]:
            storage.delete(self.uri, self.storage_cfg)


@contextmanager
def lease(out: str, run_id: str, lease_seconds: float, storage_cfg: StorageConfig | None = None) -> Iterator[Lease]:
    held = Lease(out, run_id, lease_seconds, storage_cfg)
    held.acquire()
    try:
        yield held
    finally:
        held.release()
