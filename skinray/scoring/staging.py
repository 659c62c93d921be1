"""``OUT/_staging/<run_id>/``: the parts of a run in progress, outside the scores table (this module owns them).

Each part is one Parquet file written whole (a temp file renamed, or one PUT), named by the attempt that wrote
it, so two attempts never overwrite each other. A resumed submission reads every readable part, keeps the first
score of each image (``image_key`` with the same ``image_stamp``: the same bytes) and scores only the rest; a
damaged part (a disk fault, a truncated copy) is moved aside and its rows are scored again rather than stopping
the run.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from skinray import SkinrayError
from skinray.io import storage
from skinray.io.storage import StorageConfig

STAGING_DIR = "_staging"
log = logging.getLogger("skinray.score")


def staging_dir(out: str, run_id: str) -> str:
    return storage.join(storage.normalize(out), STAGING_DIR, run_id)


@dataclass
class Staged:
    rows: pa.Table | None  # the staged rows (the scores table's file schema), one per image; None: nothing yet
    quarantined: list[str] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """The staged rows as pandas (empty, with no columns, when nothing is staged)."""
        return pd.DataFrame() if self.rows is None else self.rows.to_pandas()


def load(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> Staged:
    folder = staging_dir(out, run_id)
    tables, quarantined = [], []
    for part in storage.list_files(folder, storage_cfg, suffixes=(".parquet",)):
        try:
            tables.append(storage.read_parquet(part, storage_cfg))
        except (SkinrayError, pa.ArrowInvalid, OSError) as exc:
            target = part[: -len(".parquet")] + ".corrupt"
            storage.write_bytes(target, storage.read_bytes(part, storage_cfg), storage_cfg)
            storage.delete(part, storage_cfg)
            quarantined.append(target)
            log.warning("staged part %s is unreadable (%s): moved aside, its rows are scored again",
                        part, str(exc).splitlines()[0])
    return Staged(first_per_row(tables), quarantined)


def first_per_row(tables: list[pa.Table]) -> pa.Table | None:
    """The tables stacked, each image (``image_key`` and ``image_stamp``) once: the first one staged wins."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    rows = pa.concat_tables(tables, promote_options="default")
    keys = pd.DataFrame({"k": rows.column("image_key").to_pylist(), "s": rows.column("image_stamp").to_pylist()})
    return rows.filter(pa.array(~keys.duplicated(keep="first").to_numpy()))


class PartWriter:
    """Writes one attempt's parts: ``part-<attempt>-<n>.parquet``."""

    def __init__(self, out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> None:
        self.folder = staging_dir(out, run_id)
        self.attempt = uuid.uuid4().hex[:8]
        self.storage_cfg = storage_cfg
        self.parts = 0

    def write(self, table: pa.Table) -> None:
        storage.write_parquet(table, storage.join(self.folder, f"part-{self.attempt}-{self.parts:05d}.parquet"),
                              self.storage_cfg)
        self.parts += 1


def clear(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> None:
    storage.delete(staging_dir(out, run_id), storage_cfg)
