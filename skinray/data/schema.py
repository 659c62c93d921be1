"""Canonical columns and the adapters that map ISIC Archive and HAM10000 manifests onto them.

Everything downstream of ``prepare`` sees only the canonical columns, whatever the archive called them.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import posixpath
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from skinray import SkinrayError
from skinray.decision.metrics import AGE_MAX
from skinray.io import storage
from skinray.io.storage import StorageConfig

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
    "source",
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
# The ISIC Archive's diagnosis names → HAM10000's codes, so that one lesion type is one class across sources (the
# diagnosis output, the per-diagnosis threshold floors and the per-diagnosis figures all key on these codes).
ISIC_DX_TO_CODE = {
    "melanoma": "mel",
    "nevus": "nv",
    "basal cell carcinoma": "bcc",
    "actinic keratosis": "akiec",
    "squamous cell carcinoma": "akiec",
    "intraepithelial carcinoma": "akiec",
    "seborrheic keratosis": "bkl",
    "pigmented benign keratosis": "bkl",
    "solar lentigo": "bkl",
    "lentigo nos": "bkl",
    "lichenoid keratosis": "bkl",
    "dermatofibroma": "df",
    "vascular lesion": "vasc",
}
IMAGE_URI_COLUMNS = ("image_uri", "image_path", "image", "path", "file")
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
    if kind in ("csv", "json"):
        data = _as_utf8(uri, data)
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
            table = pa.Table.from_pandas(_json_lines(uri, data).astype("string"), preserve_index=False)
    except SkinrayError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise SkinrayError(f"manifest {uri} cannot be parsed as {kind}: {str(exc).splitlines()[0]}") from exc
    df = table.to_pandas()
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _as_utf8(uri: str, data: bytes) -> bytes:
    """Text manifests as UTF-8 bytes: UTF-16 and UTF-32 (Excel's "Unicode text", PowerShell's default) are told by
    their byte-order mark or, without one, by the NUL byte beside every ASCII character, and converted."""
    encoding = _wide_encoding(data)
    if encoding is None:
        _require_utf8(uri, data)
        return data
    try:
        return data.decode(encoding).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkinrayError(f"manifest {uri} looks like {encoding.upper()} text but is not valid {encoding.upper()} "
                           f"(byte {exc.start}): save it as UTF-8, e.g. `iconv -f {encoding.upper()} -t UTF-8`") \
            from exc


def _wide_encoding(data: bytes) -> str | None:
    """The codec of UTF-16/32 text (``utf-16``/``utf-32`` read their own mark), or None for anything else."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return encoding
    head = data[:4096]
    half = len(head) // 2
    if half < 2 or b"\x00" not in head:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)  # ASCII in UTF-16: NUL after (LE) or before (BE)
    if odd > 0.3 * half and even < 0.05 * half:
        return "utf-16-le"
    if even > 0.3 * half and odd < 0.05 * half:
        return "utf-16-be"
    return None


def _require_utf8(uri: str, data: bytes) -> None:
    """Manifests are UTF-8 (a BOM is fine); say where one is not instead of a decoder traceback."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SkinrayError(f"manifest {uri} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): save "
                           "it as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from exc


def _json_lines(uri: str, data: bytes) -> pd.DataFrame:
    """JSON lines with Python's parser (it tolerates types that vary by line), naming the line that is bad."""
    records = []
    for number, line in enumerate(data.decode("utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SkinrayError(f"manifest {uri}: line {number} is not valid JSON ({exc.msg}, column {exc.colno})") \
                from exc
        if not isinstance(record, dict):
            raise SkinrayError(f"manifest {uri}: line {number} is not a JSON object")
        records.append(record)
    return pd.DataFrame.from_records(records)


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


def dx_code(name: object) -> object:
    """An ISIC Archive diagnosis name as its HAM10000 code (``melanoma`` → ``mel``); codes and unknown names pass
    through lower-cased, a missing one stays missing."""
    if not isinstance(name, str):
        return name
    key = name.strip().lower()
    return ISIC_DX_TO_CODE.get(key, key)


def _text(s: pd.Series | None, n: int) -> pd.Series:
    if s is None:
        return pd.Series([None] * n, dtype="object")
    out = s.astype("string").str.strip()
    return out.where(~_blank(s), None).astype("object")


def _age(s: pd.Series | None, n: int) -> tuple[pd.Series | np.ndarray, pd.Series | np.ndarray]:
    """Ages in years, and which were numbers but no age (negative, above AGE_MAX, infinite, or 1e300, which would
    be stored as float32 infinity): those are read as unknown, like a missing age, and counted by the callers."""
    if s is None:
        return np.full(n, np.nan), np.zeros(n, dtype=bool)
    age = pd.to_numeric(s, errors="coerce").astype("float64")
    impossible = age.notna() & ~age.between(0, AGE_MAX)
    return age.mask(impossible), impossible


def _label_from_text(bm: pd.Series) -> pd.Series:
    lower = bm.astype("string").str.strip().str.lower()
    return lower.map({"benign": 0, "malignant": 1}).astype("Int64")


def to_canonical(df: pd.DataFrame, schema: str, malignant_dx: Iterable[str],
                 labels_required: bool = True) -> pd.DataFrame:
    """Canonical columns (without ``image_uri`` and ``split``); ``label`` is <NA> where unknown; ``_age_impossible``
    marks the rows whose age was a number but no age (read as unknown).

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
        out["age_approx"], out["_age_impossible"] = _age(get("age"), n)
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
        out["dx"] = _text(df[dx_col], n).map(dx_code) if dx_col else None
        out["age_approx"], out["_age_impossible"] = _age(get("age_approx"), n)
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
    out["source"] = _text(get("source"), n)
    uri_col = next((c for c in IMAGE_URI_COLUMNS if c in df), None)
    out["_image_ref"] = _text(df[uri_col], n) if uri_col else None
    out.attrs["schema"] = schema
    out.attrs["lesion_grouped"] = bool(lesion.notna().any())
    return out
