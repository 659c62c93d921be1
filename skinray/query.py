"""SQL over published scoring output with DuckDB: a view named ``scores`` over every completed run.

Only runs with a ``_SUCCESS`` marker are visible, so a run in progress (or half-copied on S3) never leaks into
answers. Files are read through pyarrow, so S3 works offline with the same settings as the rest of skinray.
"""

from __future__ import annotations

import posixpath
import pandas as pd
import pyarrow.dataset as pads

from skinray import SkinrayError, storage
from skinray.storage import StorageConfig

PRESETS = {
    "top_suspicious": (
        "SELECT scored_date, run_id, isic_id, image_uri, round(prob_malignant, 4) AS prob_malignant, predicted "
        "FROM scores WHERE error IS NULL {date_filter} ORDER BY prob_malignant DESC LIMIT {k}"
    ),
    "daily_counts": (
        "SELECT scored_date, count(*) AS images, count(*) FILTER (WHERE error IS NULL) AS scored, "
        "count(*) FILTER (WHERE error IS NOT NULL) AS failed, "
        "count(*) FILTER (WHERE predicted = 'malignant') AS flagged_malignant, "
        "round(avg(prob_malignant), 4) AS mean_prob FROM scores GROUP BY scored_date ORDER BY scored_date"
    ),
}


def completed_runs(out: str, storage_cfg: StorageConfig | None = None) -> list[str]:
    files = storage.list_files(storage.join(out, "runs"), storage_cfg)  # skips _SUCCESS itself: check it per run
    runs = sorted({posixpath.basename(posixpath.dirname(f)) for f in files if f.endswith("/run.json")})
    return [r for r in runs if storage.exists(storage.join(out, "runs", r, "_SUCCESS"), storage_cfg)]


def scores_dataset(out: str, storage_cfg: StorageConfig | None = None) -> pads.Dataset:
    """A pyarrow dataset over the published parts of completed runs, with Hive columns scored_date and run_id."""
    runs = set(completed_runs(out, storage_cfg))
    if not runs:
        raise SkinrayError(f"no completed scoring runs under {out}")
    base = storage.join(out, "scores")
    files = [f for f in storage.list_files(base, storage_cfg, suffixes=(".parquet",))
             if any(f"/run_id={r}/" in f for r in runs)]
    fs, base_path = storage.filesystem(base, storage_cfg)
    paths = [storage.filesystem(f, storage_cfg)[1] for f in files]
    partitioning = pads.partitioning(flavor="hive")
    return pads.dataset(paths, filesystem=fs, format="parquet", partitioning=partitioning,
                        partition_base_dir=base_path)


def run_query(out: str, sql: str, storage_cfg: StorageConfig | None = None) -> pd.DataFrame:
    import duckdb

    dataset = scores_dataset(out, storage_cfg)
    con = duckdb.connect()
    con.register("scores_arrow", dataset)
    con.execute("CREATE VIEW scores AS SELECT * FROM scores_arrow")
    try:
        return con.execute(sql).fetchdf()
    except duckdb.Error as exc:
        raise SkinrayError(f"query failed: {str(exc).splitlines()[0]}") from exc
    finally:
        con.close()


def preset_sql(name: str, k: int = 20, date: str | None = None) -> str:
    if name not in PRESETS:
        raise SkinrayError(f"unknown preset {name!r}: {sorted(PRESETS)}")
    date_filter = f"AND scored_date = '{date}'" if date else ""
    if date and not all(c.isdigit() or c == "-" for c in date):
        raise SkinrayError(f"--date must be YYYY-MM-DD, got {date!r}")
    return PRESETS[name].format(k=int(k), date_filter=date_filter)


def format_frame(df: pd.DataFrame, fmt: str = "table") -> str:
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", date_format="iso", indent=None, lines=True)
    with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200,
                           "display.max_colwidth", 60):
        return df.to_string(index=False) if len(df) else "(no rows)"


def query(out: str, sql: str, fmt: str = "table", storage_cfg: StorageConfig | None = None) -> str:
    return format_frame(run_query(out, sql, storage_cfg), fmt)
