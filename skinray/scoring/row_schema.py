"""The scores table's rows: their schema, and a run's rows (as scoring produces them) in it.

:data:`SCHEMA` is the Delta table's (``scored_date`` is its partition column), :data:`FILE_SCHEMA` a data file's
(partition values live in the log); :func:`to_rows` turns a scoring frame into it, :func:`stats` gives a data file's
Delta statistics. The table itself is :mod:`skinray.scoring.table`'s.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

PARTITION = "scored_date"
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
    ("ood_score", pa.float64()),  # the out-of-distribution guard (skinray.model.ood); null for models without one
    ("out_of_distribution", pa.bool_()),
    ("model_id", pa.string()),
    ("scored_at", pa.timestamp("us", tz="UTC")),
    ("image_key", pa.string()),  # the image's identity within the night (score_inputs): the MERGE key
    ("image_stamp", pa.string()),  # size:mtime of the bytes scored: changed bytes are scored again
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
# added to a table made before them, at its next commit
ADDED_COLUMNS = ("ood_score", "out_of_distribution", "image_key", "image_stamp")
STAT_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_timestamp, pa.types.is_string)


def same_type(have: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_map(want):
        return pa.types.is_map(have)
    return have == want or (pa.types.is_string(want) and pa.types.is_large_string(have))


def to_file_schema(table: pa.Table) -> pa.Table:
    """A data file's rows in today's file schema (a file written before :data:`ADDED_COLUMNS` lacks them)."""
    columns = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in FILE_SCHEMA]
    return pa.Table.from_arrays(columns, schema=FILE_SCHEMA)


def stats(table: pa.Table) -> str:
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


def to_rows(df: pd.DataFrame) -> pa.Table:
    """A run's rows as scoring produces them (pandas; ``dx_probs`` as JSON text) → the table's file schema."""
    columns = []
    for f in FILE_SCHEMA:
        values = df[f.name] if f.name in df else None
        if values is None:
            columns.append(pa.nulls(len(df), f.type))
        elif f.name == "dx_probs":  # JSON text from scoring, or the map as read back from a table or a part
            columns.append(pa.array([_as_map(v) for v in values], f.type))
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


def _as_map(value: Any) -> list[tuple[str, float]] | None:
    if isinstance(value, str):
        return list(json.loads(value).items())
    if isinstance(value, dict):
        return list(value.items())
    if value is None or _missing(value):
        return None
    return [tuple(pair) for pair in value]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA or value is pd.NaT
