"""``OUT/scores``: every scoring run's rows as one Delta Lake table (the only module that writes or reads it).

* Partitioned by ``scored_date`` (a DATE); ``run_id`` is a column.
* A run becomes visible to every reader — DuckDB, pyarrow, Spark, Athena, Trino, Polars — in **one commit**, or
  not at all. Data files are written first (unreferenced files are invisible), then one commit adds them all.
* Exactly once: the commit carries a Delta *application transaction* ``skinray-score/<run_id>``. A re-run checks
  its snapshot for it first, and Delta's conflict check refuses a second commit of the same run made
  concurrently, so a run's rows can never appear twice.
* Run metadata (run id, date, counts, model id, status) is in each commit's ``commitInfo``; the history is the
  audit trail, and any earlier version can be read back (``as_of``).
* "Latest" means the latest committed run of each date: what presets count unless every run is asked for.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from skinray import SkinrayError, storage
from skinray.storage import StorageConfig

TABLE_DIR = "scores"
PARTITION = "scored_date"
APP_PREFIX = "skinray-score/"
META_PREFIX = "skinray."
ROWS_PER_FILE = 500_000
SCHEMA = pa.schema([
    (PARTITION, pa.date32()),
    ("run_id", pa.string()),
    ("input_row", pa.int64()),
    ("isic_id", pa.string()),
    ("image_uri", pa.string()),
    ("prob_malignant", pa.float64()),
    ("logit_malignant", pa.float64()),
    ("predicted", pa.string()),
    ("confidence", pa.float64()),
    ("threshold", pa.float64()),
    ("dx_pred", pa.string()),
    ("dx_probs", pa.map_(pa.string(), pa.float64())),
    ("ood_score", pa.float64()),  # the out-of-distribution guard (skinray.ood); null for models without one
    ("out_of_distribution", pa.bool_()),
    ("model_id", pa.string()),
    ("scored_at", pa.timestamp("us", tz="UTC")),
    ("error", pa.string()),
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("mean_red", pa.float32()),
    ("mean_green", pa.float32()),
    ("mean_blue", pa.float32()),
    ("label", pa.int8()),
    ("benign_malignant", pa.string()),
    ("dx", pa.string()),
    ("age_approx", pa.float32()),
    ("sex", pa.string()),
    ("anatom_site_general", pa.string()),
    ("lesion_id", pa.string()),
])
FILE_SCHEMA = pa.schema([f for f in SCHEMA if f.name != PARTITION])  # partition values live in the log
ADDED_COLUMNS = ("ood_score", "out_of_distribution")  # added to a table made before them, at its next commit
STAT_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_timestamp, pa.types.is_string)


def table_uri(out: str) -> str:
    return storage.join(storage.normalize(out), TABLE_DIR)


def _options(uri: str, storage_cfg: StorageConfig | None) -> dict[str, str]:
    return storage.delta_storage_options(uri, storage_cfg)


def _load(uri: str, storage_cfg: StorageConfig | None, version: int | None = None) -> Any:
    """The table at ``uri`` (latest, or at ``version``), or None when there is none yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(uri, version=version, storage_options=_options(uri, storage_cfg))
    except TableNotFoundError:
        return None
    except Exception as exc:
        raise SkinrayError(f"cannot read the scores table {uri}: {str(exc).splitlines()[0]}") from exc


def _open_or_create(uri: str, storage_cfg: StorageConfig | None) -> Any:
    from deltalake import DeltaTable

    table = _load(uri, storage_cfg)
    if table is not None:
        return _with_added_columns(table, uri, storage_cfg)
    try:
        DeltaTable.create(uri, SCHEMA, mode="ignore", partition_by=[PARTITION], name="skinray_scores",
                          description="skinray scores: one commit per scoring run",
                          storage_options=_options(uri, storage_cfg))
    except Exception as exc:  # two first runs at once: the other one created it
        if _load(uri, storage_cfg) is None:
            raise SkinrayError(f"cannot create the scores table {uri}: {str(exc).splitlines()[0]}") from exc
    return _load(uri, storage_cfg)


def _with_added_columns(table: Any, uri: str, storage_cfg: StorageConfig | None) -> Any:
    """A table made before :data:`ADDED_COLUMNS` gains them (null in its earlier rows) in one schema commit."""
    from deltalake import Schema

    have = {f.name for f in table.schema().fields}
    missing = [f for f in Schema.from_arrow(SCHEMA).fields if f.name in ADDED_COLUMNS and f.name not in have]
    if missing:
        table.alter.add_columns(missing)
        table = _load(uri, storage_cfg)
    return table


def app_id(run_id: str) -> str:
    return APP_PREFIX + run_id


def is_committed(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> bool:
    table = _load(table_uri(out), storage_cfg)
    return table is not None and table.transaction_version(app_id(run_id)) is not None


def _stats(table: pa.Table) -> str:
    """Delta file statistics: row and null counts, min/max of every flat column.

    Readers prune files with them; deltalake's pyarrow reader turns a column without min/max into a condition that
    never holds, so every column that has values gets both.
    """
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    for f in table.schema:
        if table.num_rows and any(check(f.type) for check in STAT_TYPES):
            lo, hi = pc.min_max(table[f.name]).values()
            if lo.is_valid:
                mins[f.name], maxs[f.name] = _stat_value(lo.as_py()), _stat_value(hi.as_py())
    nulls = {f.name: int(table[f.name].null_count) for f in table.schema if not pa.types.is_map(f.type)}
    return json.dumps({"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def _stat_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value


def commit_run(out: str, run_id: str, scored_date: str, rows: pa.Table, metadata: dict[str, Any],
               storage_cfg: StorageConfig | None = None, fail_at: str | None = None) -> int:
    """Add ``rows`` (a run's rows, :data:`FILE_SCHEMA`) to the table in one commit; returns the table version.

    Idempotent: if this run is already in the table, nothing is written and its version is returned.
    """
    from deltalake import CommitProperties, Transaction
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction

    uri = table_uri(out)
    table = _open_or_create(uri, storage_cfg)
    if table.transaction_version(app_id(run_id)) is not None:
        return run_version(out, run_id, storage_cfg)
    rows = rows.select(FILE_SCHEMA.names).cast(FILE_SCHEMA)
    attempt = uuid.uuid4().hex[:8]
    actions = []
    for i, start in enumerate(range(0, max(rows.num_rows, 1), ROWS_PER_FILE)):
        chunk = rows.slice(start, ROWS_PER_FILE)
        rel = f"{PARTITION}={scored_date}/part-{run_id}-{attempt}-{i:03d}.zstd.parquet"
        buf = io.BytesIO()
        pq.write_table(chunk, buf, compression="zstd")
        storage.write_bytes(storage.join(uri, *rel.split("/")), buf.getvalue(), storage_cfg)
        actions.append(AddAction(rel, buf.getbuffer().nbytes, {PARTITION: scored_date}, int(time.time() * 1000),
                                 True, _stats(chunk)))
    if fail_at == "after_data_files":
        os._exit(137)  # fault injection (tests): as if killed with the data written and nothing committed
    info = {META_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    info.update({META_PREFIX + "run_id": run_id, META_PREFIX + "scored_date": scored_date})
    try:
        table.create_write_transaction(
            actions, mode="append", schema=SCHEMA, partition_by=[PARTITION],
            commit_properties=CommitProperties(custom_metadata=info,
                                               app_transactions=[Transaction(app_id(run_id), 1)]))
    except CommitFailedError as exc:
        if is_committed(out, run_id, storage_cfg):
            raise SkinrayError(f"run {run_id} was committed by another process at the same time; its rows are in "
                               "the table once, this attempt added nothing") from exc
        raise SkinrayError(f"cannot commit run {run_id} to {uri}: {str(exc).splitlines()[0]}") from exc
    return run_version(out, run_id, storage_cfg)


# --- reading ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The table as of one version: a pyarrow dataset over every committed row, and the runs that made it."""

    uri: str
    version: int
    dataset: pads.Dataset
    runs: pd.DataFrame  # version, committed_at, run_id, scored_date, latest (of its date), and commit metadata

    def latest_run_ids(self) -> list[str]:
        return self.runs.loc[self.runs["latest"], "run_id"].tolist()

    def rows(self, all_runs: bool = False) -> pads.Dataset:
        """Every row of every run, or (default) of the latest committed run of each date only."""
        if all_runs or self.runs.empty:
            return self.dataset
        return self.dataset.filter(pc.field("run_id").isin(self.latest_run_ids()))


def _parse_as_of(as_of: str | int | None) -> int | dt.datetime | None:
    if as_of is None or isinstance(as_of, int):
        return as_of
    text = str(as_of).strip()
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SkinrayError(f"--as-of must be a table version (a number) or an ISO timestamp, got {as_of!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def snapshot(out: str, storage_cfg: StorageConfig | None = None, as_of: str | int | None = None) -> Snapshot:
    """The committed table, latest or as of a version or timestamp (what was reported before a re-run)."""
    uri = table_uri(out)
    table = _load(uri, storage_cfg)
    if table is None:
        raise SkinrayError(f"no scores table under {out} (no committed scoring run yet)")
    history = table.history()  # of the latest version: deltalake numbers an older version's history wrongly
    when = _parse_as_of(as_of)
    first = min((c["timestamp"] for c in history if "timestamp" in c), default=None)
    if isinstance(when, dt.datetime) and first is not None and when.timestamp() * 1000 < first:
        # deltalake would load the first version anyway: a time before the table existed has no version
        first_at = dt.datetime.fromtimestamp(first / 1000, dt.timezone.utc).isoformat(timespec="seconds")
        raise SkinrayError(f"{uri} has no version as of {as_of}: the table's first version is from {first_at}")
    try:
        if when is not None:
            table.load_as_version(when)
    except Exception as exc:
        raise SkinrayError(f"{uri} has no version as of {as_of}: {str(exc).splitlines()[0]}") from exc
    return Snapshot(uri, table.version(), table.to_pyarrow_dataset(), _runs(history, table.version()))


def _runs(history: list[dict[str, Any]], current: int) -> pd.DataFrame:
    records = []
    for commit in history:
        run_id = commit.get(META_PREFIX + "run_id")
        if run_id is None or commit.get("version", 0) > current:
            continue
        record = {"version": commit["version"], "committed_at": pd.Timestamp(commit["timestamp"], unit="ms", tz="UTC"),
                  "run_id": run_id, "scored_date": commit.get(META_PREFIX + "scored_date")}
        for key, value in commit.items():
            if key.startswith(META_PREFIX) and key[len(META_PREFIX):] not in record:
                record[key[len(META_PREFIX):]] = value
        records.append(record)
    runs = pd.DataFrame(records, columns=["version", "committed_at", "run_id", "scored_date"] if not records else None)
    if runs.empty:
        return runs.assign(latest=pd.Series(dtype=bool))
    runs = runs.sort_values("version").reset_index(drop=True)
    runs["latest"] = runs["version"] == runs.groupby("scored_date")["version"].transform("max")
    return runs


def run_version(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> int:
    runs = snapshot(out, storage_cfg).runs
    match = runs[runs["run_id"] == run_id]
    if match.empty:
        raise SkinrayError(f"run {run_id} is not in the scores table")
    return int(match["version"].iloc[0])


def run_rows(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> pd.DataFrame:
    """One committed run's rows, in input order."""
    data = snapshot(out, storage_cfg).dataset.to_table(filter=pc.field("run_id") == run_id).to_pandas()
    return data.sort_values("input_row").reset_index(drop=True)


def to_rows(df: pd.DataFrame) -> pa.Table:
    """A run's rows as scoring produces them (pandas; ``dx_probs`` as JSON text) → the table's file schema."""
    columns = []
    for f in FILE_SCHEMA:
        values = df[f.name] if f.name in df else None
        if values is None:
            columns.append(pa.nulls(len(df), f.type))
        elif f.name == "dx_probs":
            columns.append(pa.array([list(json.loads(v).items()) if isinstance(v, str) else None for v in values],
                                    f.type))
        elif pa.types.is_string(f.type):
            columns.append(pa.array([None if _missing(v) else str(v) for v in values], f.type))
        elif pa.types.is_integer(f.type):
            columns.append(pa.array(pd.array(values, dtype="Int64"), pa.int64()).cast(f.type))
        elif pa.types.is_boolean(f.type):
            columns.append(pa.array([None if _missing(v) else bool(v) for v in values], f.type))
        elif pa.types.is_timestamp(f.type):
            columns.append(pa.array(pd.to_datetime(values, utc=True), f.type))
        else:
            columns.append(pa.array(pd.to_numeric(values, errors="coerce"), f.type, from_pandas=True))
    return pa.Table.from_arrays(columns, schema=FILE_SCHEMA)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA or value is pd.NaT
