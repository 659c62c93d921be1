"""``OUT/scores``: every scoring night's rows as one Delta Lake table (the only module that writes or reads it).

* Partitioned by ``scored_date`` (a DATE); ``run_id`` is a column (the night's run).
* **One current answer per image and night.** Each submission of a run is one commit keyed on (``scored_date``,
  ``image_key``): an image scored again that night (changed bytes, another model, a new run id) *replaces* its
  row, a new one is added — a copy-on-write merge in Delta's own actions: the night's files that hold a replaced
  image are removed and what else they held is re-added, beside the new rows. A plain ``SELECT count(*)`` from
  DuckDB, Spark, Athena, Trino or pandas therefore counts each image of a night once; every earlier answer stays
  readable by time travel (``as_of``), and the history says which commit replaced what.
* A submission becomes visible to every reader in **one commit**, or not at all: data files are written first
  (unreferenced files are invisible), then one commit adds and removes them all.
* Exactly once: the commit carries a Delta *application transaction* ``skinray-score/<run_id>`` whose version is
  the submission's number; a submission already in the table is not committed again, Delta's conflict check
  refuses two commits removing the same file, and a second process is kept out by the run's lease
  (:mod:`skinray.scoring.runs`). Whether a run's submission is in the table is :func:`submissions`' answer.
* Run metadata (run id, submission, date, counts, model id, status) is in each commit's ``commitInfo``.
* A table at ``OUT/scores`` with another schema (not made by skinray) is refused, never written into.

The rows' schema and their conversion from a scoring frame are :mod:`skinray.scoring.row_schema`'s.
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

from skinray import SkinrayError, TemporaryError
from skinray.io import storage
from skinray.io.storage import StorageConfig
from skinray.scoring.row_schema import ADDED_COLUMNS, FILE_SCHEMA, PARTITION, SCHEMA, same_type, stats, to_file_schema

TABLE_DIR = "scores"
APP_PREFIX = "skinray-score/"
META_PREFIX = "skinray."
ROWS_PER_FILE = 500_000
COMMIT_TRIES = 5  # commits refused by a concurrent writer's (another night's, another run's) before giving up


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
        check_schema(table, uri)
        return _with_added_columns(table, uri, storage_cfg)
    try:
        DeltaTable.create(uri, SCHEMA, mode="ignore", partition_by=[PARTITION], name="skinray_scores",
                          description="skinray scores: one answer per image and night",
                          storage_options=_options(uri, storage_cfg))
    except Exception as exc:  # two first runs at once: the other one created it
        if _load(uri, storage_cfg) is None:
            raise SkinrayError(f"cannot create the scores table {uri}: {str(exc).splitlines()[0]}") from exc
    return _load(uri, storage_cfg)


def check_schema(table: Any, uri: str) -> None:
    """Refuse a Delta table that is not a skinray scores table (another tool's table at ``OUT/scores``): writing
    our rows into it would commit columns that read back as nulls."""
    have = {f.name: f.type for f in pa.schema(table.schema().to_arrow())}
    wrong = [f.name for f in SCHEMA if f.name not in ADDED_COLUMNS
             and (f.name not in have or not same_type(have[f.name], f.type))]
    if wrong or table.metadata().partition_columns != [PARTITION]:
        raise SkinrayError(f"{uri} is a Delta table of another schema (missing or different: "
                           f"{', '.join(wrong[:6]) or 'the scored_date partition'}{' ...' if len(wrong) > 6 else ''})"
                           ": not a skinray scores table; choose another --out")


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


def _committed(table: Any, run_id: str) -> int:
    """How many submissions of the run ``table`` (a loaded version, or None) holds: its application transaction."""
    return 0 if table is None else int(table.transaction_version(app_id(run_id)) or 0)


def submissions(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> int:
    """How many submissions of this run are committed (0: none)."""
    return _committed(_load(table_uri(out), storage_cfg), run_id)


def answered(out: str, run_id: str, scored_date: str, storage_cfg: StorageConfig | None = None) -> pd.DataFrame:
    """``image_key`` and ``image_stamp`` of the current answers this run gave for its night: what a re-submit of the
    same command need not score again."""
    table = _load(table_uri(out), storage_cfg)
    if table is None:
        return pd.DataFrame({"image_key": pd.Series(dtype=object), "image_stamp": pd.Series(dtype=object)})
    check_schema(table, table_uri(out))
    have = {f.name for f in table.schema().fields}
    columns = ["image_uri", "image_key", "image_stamp"] if "image_key" in have else ["image_uri"]
    found = table.to_pyarrow_dataset().to_table(
        columns=columns, filter=(pc.field(PARTITION) == pa.scalar(dt.date.fromisoformat(scored_date)))
        & (pc.field("run_id") == run_id)).to_pandas()
    if "image_key" not in found:
        found["image_key"] = found["image_stamp"] = None
    found["image_key"] = found["image_key"].fillna(found["image_uri"])
    found["image_stamp"] = found["image_stamp"].fillna("")
    return found[["image_key", "image_stamp"]]


def _write_files(uri: str, scored_date: str, name: str, rows: pa.Table, storage_cfg: StorageConfig | None) -> list:
    """``rows`` as data files of the night's partition (not yet part of the table): their add actions."""
    from deltalake.transaction import AddAction

    actions = []
    for i, start in enumerate(range(0, rows.num_rows, ROWS_PER_FILE)):
        chunk = rows.slice(start, ROWS_PER_FILE)
        rel = f"{PARTITION}={scored_date}/part-{name}-{i:03d}.zstd.parquet"
        buf = io.BytesIO()
        pq.write_table(chunk, buf, compression="zstd")
        storage.write_bytes(storage.join(uri, *rel.split("/")), buf.getvalue(), storage_cfg)
        actions.append(AddAction(rel, buf.getbuffer().nbytes, {PARTITION: scored_date}, int(time.time() * 1000),
                                 True, stats(chunk)))
    return actions


def _replaced(table: Any, uri: str, scored_date: str, keys: set[str], name: str,
              storage_cfg: StorageConfig | None) -> list:
    """The night's files holding an image in ``keys``: removed, and the rows of other images they held re-added."""
    from deltalake.transaction import RemoveAction

    files = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    partition = files.get(f"partition.{PARTITION}", [None] * len(files["path"]))
    actions: list = []
    kept: list[pa.Table] = []
    now = int(time.time() * 1000)
    for path, size, day in zip(files["path"], files["size_bytes"], partition):
        if str(day) != scored_date:
            continue
        data = storage.read_parquet(storage.join(uri, *path.split("/")), storage_cfg)
        key = data["image_key"] if "image_key" in data.column_names else data["image_uri"]
        if "image_key" in data.column_names:
            key = pc.coalesce(key, data["image_uri"])  # rows of a table made before image_key: keyed by URI
        hit = pc.fill_null(pc.is_in(key, value_set=pa.array(sorted(keys), pa.string())), False)
        if not pc.any(hit).as_py():
            continue
        actions.append(RemoveAction(path, True, now, size, {PARTITION: scored_date}))
        kept.append(data.filter(pc.invert(hit)))
    rest = [t for t in kept if t.num_rows]
    if rest:
        merged = pa.concat_tables([to_file_schema(t) for t in rest])
        actions += _write_files(uri, scored_date, f"{name}-kept", merged, storage_cfg)
    return actions


def commit_run(out: str, run_id: str, scored_date: str, rows: pa.Table, metadata: dict[str, Any],
               storage_cfg: StorageConfig | None = None, fail_at: str | None = None, submission: int = 1) -> int:
    """Merge ``rows`` (one submission of a run, :data:`FILE_SCHEMA`) into the night in one commit: each image's row
    replaces that image's earlier answer of the night. Returns the table version.

    Idempotent: a submission already committed (its application transaction is in the table) writes nothing.
    """
    from deltalake import CommitProperties, Transaction
    from deltalake.exceptions import CommitFailedError

    uri = table_uri(out)
    table = _open_or_create(uri, storage_cfg)
    if _committed(table, run_id) >= submission:
        return run_version(out, run_id, storage_cfg)
    rows = rows.select(FILE_SCHEMA.names).cast(FILE_SCHEMA)
    if rows.column("image_key").null_count:
        raise SkinrayError(f"run {run_id}: rows without an image_key cannot be committed")
    name = f"{run_id}-{submission}-{uuid.uuid4().hex[:8]}"
    keys = set(rows.column("image_key").to_pylist())
    added = _write_files(uri, scored_date, name, rows, storage_cfg)
    if fail_at == "after_data_files":
        os._exit(137)  # fault injection (tests): as if killed with the data written and nothing committed
    info = {META_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    info.update({META_PREFIX + "run_id": run_id, META_PREFIX + "scored_date": scored_date,
                 META_PREFIX + "submission": str(submission)})
    for attempt in range(COMMIT_TRIES):
        # optimistic concurrency: what to replace is worked out on the latest snapshot, again after a conflict
        replaced = _replaced(table, uri, scored_date, keys, f"{name}-{attempt}", storage_cfg)
        info[META_PREFIX + "replaced_files"] = str(sum(type(a).__name__ == "RemoveAction" for a in replaced))
        try:
            table.create_write_transaction(
                replaced + added, mode="append", schema=SCHEMA, partition_by=[PARTITION],
                commit_properties=CommitProperties(custom_metadata=info,
                                                   app_transactions=[Transaction(app_id(run_id), submission)]))
            break
        except CommitFailedError as exc:
            if submissions(out, run_id, storage_cfg) >= submission:
                raise SkinrayError(f"run {run_id} was committed by another process at the same time; its rows are "
                                   "in the table once, this attempt added nothing", run_id=run_id) from exc
            if attempt + 1 == COMMIT_TRIES:
                raise TemporaryError(f"cannot commit run {run_id} to {uri}: {str(exc).splitlines()[0]} (another "
                                     "writer kept committing; run the same command again)", run_id=run_id) from exc
            table = _load(uri, storage_cfg)
        except OSError as exc:
            raise storage._wrap(uri, exc) from exc
    return run_version(out, run_id, storage_cfg)


# --- reading ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The table as of one version: a pyarrow dataset over every committed row, and the runs that made it."""

    uri: str
    version: int
    dataset: pads.Dataset  # the current answer of each image and night, as of this version
    runs: pd.DataFrame  # one row per commit: version, committed_at, run_id, submission, scored_date, metadata


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
    runs["submission"] = pd.to_numeric(runs.get("submission", 1), errors="coerce").fillna(1).astype(int)
    return runs


def run_version(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> int:
    """The table version of the run's latest committed submission."""
    runs = snapshot(out, storage_cfg).runs
    match = runs[runs["run_id"] == run_id]
    if match.empty:
        raise SkinrayError(f"run {run_id} is not in the scores table")
    return int(match["version"].iloc[-1])


def run_submissions(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> list[dict[str, Any]]:
    """The run's committed submissions, from the table's history: the one record no crash can leave behind."""
    runs = snapshot(out, storage_cfg).runs
    keep = [c for c in ("submission", "version", "committed_at", "new", "retry_later", "started_at") if c in runs]
    mine = runs.loc[runs["run_id"] == run_id, keep].rename(columns={"version": "table_version"})
    records = json.loads(mine.to_json(orient="records", date_format="iso"))
    for r in records:
        for key in ("new", "retry_later"):
            if isinstance(r.get(key), str) and r[key].isdigit():
                r[key] = int(r[key])
    return records


def run_rows(out: str, run_id: str, storage_cfg: StorageConfig | None = None) -> pd.DataFrame:
    """The current answers a run gave (every submission of it), in input order."""
    data = snapshot(out, storage_cfg).dataset.to_table(filter=pc.field("run_id") == run_id).to_pandas()
    return data.sort_values("input_row").reset_index(drop=True)
