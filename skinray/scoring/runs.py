"""``OUT/runs/<run_id>/``: one scoring run's folder, and its lease (this module writes and reads ``lease.json``).

``run.json`` and ``rows.parquet`` are the run's record (:mod:`skinray.scoring.record`), the pictures and the page
its report's (:mod:`skinray.scoring.report`). ``lease.json`` names the process scoring the run and is renewed
while it works, so a second process started on the same run id fails at once with one line instead of scoring
everything again; a lease whose owner died (same host, process gone) or stopped renewing
(``score.lease_seconds``) is taken over — that is how a killed run resumes.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from skinray import SkinrayError
from skinray.io import storage
from skinray.io.storage import StorageConfig

LEASE_FILE = "lease.json"
RUNS_DIR = "runs"
CONFIRM_DELAY_S = 0.2


def run_dir(out: str, run_id: str) -> str:
    return storage.join(storage.normalize(out), RUNS_DIR, run_id)


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
