"""Canonical columns and the adapters that map ISIC Archive and HAM10000 manifests onto them.

Everything downstream of ``prepare`` sees only the canonical columns, whatever the archive called them.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow as pa
import pyarrow.parquet as pq

from skinray import SkinrayError, storage
from skinray.storage import StorageConfig

CANONICAL_COLUMNS = [
    "isic_id",
    "image_uri",
    "label",
    "benign_malignant",
    "dx",
    "age_approx",
    "sex",
    "anatom_site_general",
    "lesion_id",
    "split",
]
REJECT_COLUMNS = ["isic_id", "image_uri", "reason"]
METADATA_COLUMNS = ["age_approx", "sex", "anatom_site_general"]

HAM_SITE_TO_ISIC = {
    "abdomen": "anterior torso",
    "chest": "anterior torso",
    "trunk": "anterior torso",
    "back": "posterior torso",
    "face": "head/neck",
    "scalp": "head/neck",
    "neck": "head/neck",
    "ear": "head/neck",
    "upper extremity": "upper extremity",
    "hand": "upper extremity",
    "lower extremity": "lower extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "genital": "oral/genital",
    "unknown": "unknown",
}
ISIC_SITES = {
    "anterior torso",
    "posterior torso",
    "lateral torso",
    "head/neck",
    "upper extremity",
    "lower extremity",
    "palms/soles",
    "oral/genital",
    "torso",
}
IMAGE_URI_COLUMNS = ("image_uri", "image_path", "image", "path", "file")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MANIFEST_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json",
                     ".ndjson": "json"}


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype("string").str.strip().fillna("") == "")


def read_manifest(uri: str, storage_cfg: StorageConfig | None = None) -> pd.DataFrame:
    """Read a CSV / Parquet / JSON-lines manifest (file or Parquet directory) as strings, losing no row."""
    if storage.is_dir(uri, storage_cfg):
        files = storage.list_files(uri, storage_cfg, suffixes=(".parquet", ".pq"))
        if not files:
            raise SkinrayError(f"manifest directory {uri} holds no Parquet files")
        frames = [read_manifest(f, storage_cfg) for f in files]
        return pd.concat(frames, ignore_index=True)
    ext = os.path.splitext(uri.lower())[1]
    kind = MANIFEST_SUFFIXES.get(ext)
    if kind is None:
        raise SkinrayError(f"manifest {uri}: unknown format {ext or '(no suffix)'}; use .csv, .parquet or .jsonl")
    data = storage.read_bytes(uri, storage_cfg)
    try:
        if kind == "csv":
            table = pacsv.read_csv(
                io.BytesIO(data),
                convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=True,
                                                     auto_dict_encode=False),
                read_options=pacsv.ReadOptions(autogenerate_column_names=False),
            )
        elif kind == "parquet":
            table = pq.read_table(io.BytesIO(data))
        else:
            # Python's parser tolerates what typed readers refuse: types that vary by line, NaN tokens.
            records = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
            table = pa.Table.from_pandas(pd.DataFrame.from_records(records).astype("string"), preserve_index=False)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise SkinrayError(f"manifest {uri} cannot be parsed as {kind}: {str(exc).splitlines()[0]}") from exc
    df = table.to_pandas()
    df.columns = [str(c).strip() for c in df.columns]
    return df


def detect_schema(columns: Iterable[str]) -> str:
    cols = set(columns)
    if {"image_id", "dx"} <= cols:
        return "ham10000"
    if "isic_id" in cols:
        return "isic"
    raise SkinrayError(
        "cannot tell the manifest's schema: expected ISIC Archive columns (isic_id, benign_malignant, ...) or "
        f"HAM10000 columns (image_id, dx, ...); found {sorted(cols)[:12]}"
    )


def _text(s: pd.Series | None, n: int) -> pd.Series:
    if s is None:
        return pd.Series([None] * n, dtype="object")
    out = s.astype("string").str.strip()
    return out.where(~_blank(s), None).astype("object")


def _age(s: pd.Series | None, n: int) -> pd.Series:
    if s is None:
        return pd.Series(np.full(n, np.nan), dtype="float64")
    return pd.to_numeric(s, errors="coerce").astype("float64")


def _label_from_text(bm: pd.Series) -> pd.Series:
    lower = bm.astype("string").str.strip().str.lower()
    return lower.map({"benign": 0, "malignant": 1}).astype("Int64")


def to_canonical(df: pd.DataFrame, schema: str, malignant_dx: Iterable[str],
                 labels_required: bool = True) -> pd.DataFrame:
    """Canonical columns (without ``image_uri`` and ``split``); ``label`` is <NA> where unknown.

    Scoring passes ``labels_required=False``: an unlabelled manifest (ids or image URIs only) is fine there.
    """
    if schema == "auto":
        cols = set(df.columns)
        if not labels_required and not ({"image_id", "isic_id"} & cols) and set(IMAGE_URI_COLUMNS) & cols:
            schema = "isic"
            df = df.assign(isic_id=df[next(c for c in IMAGE_URI_COLUMNS if c in cols)].map(
                lambda u: posixpath.splitext(posixpath.basename(str(u)))[0] if isinstance(u, str) else None))
        else:
            schema = detect_schema(cols)
    n = len(df)
    get = df.get
    malignant = {d.strip().lower() for d in malignant_dx}
    out = pd.DataFrame(index=df.index)
    if schema == "ham10000":
        if "image_id" not in df or "dx" not in df:
            raise SkinrayError("HAM10000 manifest needs columns image_id and dx")
        out["isic_id"] = _text(df["image_id"], n)
        dx = _text(df["dx"], n)
        out["dx"] = dx.str.lower() if hasattr(dx, "str") else dx
        dx_lower = out["dx"].astype("string")
        label = pd.Series(pd.NA, index=df.index, dtype="Int64")
        known = dx_lower.notna()
        label[known] = dx_lower[known].isin(malignant).astype(int)
        out["label"] = label
        out["age_approx"] = _age(get("age"), n)
        site = _text(get("localization"), n).astype("string").str.lower()
        out["anatom_site_general"] = site.map(lambda v: HAM_SITE_TO_ISIC.get(v, v) if isinstance(v, str) else None)
    elif schema == "isic":
        if "isic_id" not in df:
            raise SkinrayError("ISIC manifest needs the column isic_id")
        out["isic_id"] = _text(df["isic_id"], n)
        if "benign_malignant" in df:
            label = _label_from_text(df["benign_malignant"])
        elif "diagnosis_1" in df:
            label = _label_from_text(df["diagnosis_1"])
        elif "target" in df:
            label = pd.to_numeric(df["target"], errors="coerce").astype("Int64")
            label = label.where(label.isin([0, 1]))
        elif labels_required:
            raise SkinrayError("ISIC manifest needs a label column: benign_malignant, diagnosis_1 or target")
        else:
            label = pd.Series(pd.NA, index=df.index, dtype="Int64")
        out["label"] = label
        dx_col = next((c for c in ("diagnosis", "diagnosis_3", "diagnosis_2", "dx") if c in df), None)
        out["dx"] = _text(df[dx_col], n) if dx_col else None
        out["age_approx"] = _age(get("age_approx"), n)
        site = _text(get("anatom_site_general"), n).astype("string").str.lower()
        out["anatom_site_general"] = site.astype("object").where(site.notna(), None)
    else:
        raise SkinrayError(f"unknown schema {schema!r}: use auto, isic or ham10000")
    out["benign_malignant"] = out["label"].map({0: "benign", 1: "malignant"}).astype("object")
    out["benign_malignant"] = out["benign_malignant"].where(out["label"].notna(), None)
    sex = _text(get("sex"), n).astype("string").str.lower()
    out["sex"] = sex.where(sex.isin(["male", "female"]), "unknown").fillna("unknown").astype("object")
    lesion = _text(get("lesion_id"), n)
    out["lesion_id"] = lesion
    uri_col = next((c for c in IMAGE_URI_COLUMNS if c in df), None)
    out["_image_ref"] = _text(df[uri_col], n) if uri_col else None
    out.attrs["schema"] = schema
    out.attrs["lesion_grouped"] = bool(lesion.notna().any())
    return out


def unsafe_id(value: str) -> bool:
    """An id that would address a file outside the image root once put into a path template."""
    return (
        value in {".", ".."}
        or "/" in value
        or "\\" in value
        or "\x00" in value
        or ".." in value.split(".")
        or value.startswith("~")
    )


def resolve_image_uri(row_id: str, ref: str | None, images_root: str | None, template: str,
                      columns: dict[str, str]) -> str:
    """Where the image of one row lives: its own URI column, else the template under the images root."""
    if ref:
        if ref.startswith(("s3://", "file://", "/")) or images_root is None:
            return ref
        return storage.join(images_root, ref)
    if images_root is None:
        raise SkinrayError("the manifest has no image_uri column: pass --images with the folder of the images")
    root = images_root.rstrip("/")
    try:
        return template.format(**{**columns, "images": root, "isic_id": row_id})
    except KeyError as exc:
        raise SkinrayError(f"image template {template!r} names an unknown column {exc}") from exc


def list_image_folder(uri: str, storage_cfg: StorageConfig | None = None) -> pd.DataFrame:
    """A bare folder/prefix of images as a manifest: id = file stem, recursive."""
    files = storage.list_files(uri, storage_cfg, suffixes=IMAGE_SUFFIXES)
    ids = [posixpath.splitext(posixpath.basename(f))[0] for f in files]
    return pd.DataFrame({"isic_id": ids, "image_uri": files})
