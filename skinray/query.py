"""SQL over the scores table with DuckDB, in a sandbox.

Views: ``scores`` (the current answer of each image and night: each image counts once per date, whichever run gave
it) and ``runs`` (one row per committed submission, from the table's history). ``as_of`` reads an earlier table
version or time: what was reported before a re-score.

Every connection opened here has external access switched off and its configuration locked once the tables are
registered: SQL cannot read local files (``read_text('/proc/self/environ')``), write them (``COPY ... TO``) or
install extensions.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow.dataset as pads

from skinray import SkinrayError
from skinray.config import check_date
from skinray.io.storage import StorageConfig
from skinray.scoring import table as scores_table

PRESETS = {
    "top_suspicious": (
        "SELECT scored_date, run_id, isic_id, image_uri, round(prob_malignant, 4) AS prob_malignant, predicted, "
        "dx_pred FROM scores WHERE error IS NULL {date_filter} ORDER BY logit_malignant DESC, input_row LIMIT {k}"
    ),
    "daily_counts": (
        "SELECT scored_date, count(*) AS images, count(*) FILTER (WHERE error IS NULL) AS scored, "
        "count(*) FILTER (WHERE error IS NOT NULL) AS failed, "
        "count(*) FILTER (WHERE predicted = 'malignant') AS flagged_malignant, "
        "count(*) FILTER (WHERE predicted = 'benign') AS benign, "
        "count(*) FILTER (WHERE predicted = 'out_of_distribution') AS out_of_distribution, "
        "round(avg(prob_malignant), 4) AS mean_prob FROM scores GROUP BY scored_date ORDER BY scored_date"
    ),
}


def scores_dataset(out: str, storage_cfg: StorageConfig | None = None, as_of: str | int | None = None
                   ) -> pads.Dataset:
    """The committed rows (one answer per image and night) as a pyarrow dataset: the Python entry."""
    return scores_table.snapshot(out, storage_cfg, as_of).dataset


def connect(out: str, storage_cfg: StorageConfig | None = None, as_of: str | int | None = None) -> Any:
    """A sandboxed DuckDB connection with the ``scores`` and ``runs`` views."""
    import duckdb

    snap = scores_table.snapshot(out, storage_cfg, as_of)
    con = duckdb.connect(":memory:")
    con.register("scores", snap.dataset)
    con.register("runs", snap.runs)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def run_query(out: str, sql: str, storage_cfg: StorageConfig | None = None, as_of: str | int | None = None
              ) -> pd.DataFrame:
    import duckdb

    con = connect(out, storage_cfg, as_of)
    try:
        return con.execute(sql).fetchdf()
    except duckdb.Error as exc:
        raise SkinrayError(f"query failed: {str(exc).splitlines()[0]}") from exc
    finally:
        con.close()


def preset_sql(name: str, k: int = 20, date: str | None = None) -> str:
    if name not in PRESETS:
        raise SkinrayError(f"unknown preset {name!r}: {sorted(PRESETS)}")
    if date is not None:
        try:
            date = check_date(date)
        except ValueError as exc:
            raise SkinrayError(f"--date {exc}") from None
    date_filter = f"AND scored_date = DATE '{date}'" if date else ""
    return PRESETS[name].format(k=int(k), date_filter=date_filter)


def format_frame(df: pd.DataFrame, fmt: str = "table") -> str:
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", date_format="iso", indent=None, lines=True)
    with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200,
                           "display.max_colwidth", 60):
        return df.to_string(index=False) if len(df) else "(no rows)"


def query(out: str, sql: str, fmt: str = "table", storage_cfg: StorageConfig | None = None,
          as_of: str | int | None = None) -> str:
    return format_frame(run_query(out, sql, storage_cfg, as_of), fmt)
