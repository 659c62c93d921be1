"""manifest + images → ``prepared/``: clean, checked, split, with every input row accounted for.

Outputs: ``manifest.parquet`` (kept rows, canonical columns), ``rejects.parquet`` (``isic_id, image_uri,
reason``), ``report.json`` (written last: its presence means the directory is complete) and ``config.yaml``.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from skinray import SkinrayError, TemporaryError
from skinray.config import ImageConfig, PrepareConfig, SkinrayConfig, SourceConfig
from skinray.data import images, schema, split
from skinray.io import paths, storage
from skinray.io.storage import StorageConfig
from skinray.runtime import cluster_cpus, dataset_from_frame, ensure_ray, versions

REJECT_REASONS = {
    "empty_id": "the row has no image id",
    "unsafe_id": "the id, a template column or the image path would escape the image root",
    "unsafe_path": "the image file resolves (through a symlink) outside the image root",
    "duplicate_id": "the id appeared earlier in the manifest",
    "unknown_label": "benign/malignant cannot be read from the row",
    "missing": "the image file does not exist",
    "unreadable": "the image file exists but cannot be read",
    "empty": "the image file has zero bytes",
    "too_large": "the image file is larger than image.max_bytes",
    "too_many_pixels": "the image has more pixels than image.max_pixels",
    "not_image": "the file is not an image",
    "undecodable": "the image is truncated or corrupt",
}
ROWS_PER_BLOCK = 20_000  # bench/bench_prepare.py: 1.55x faster than 2,000 at 200k rows
log = logging.getLogger("skinray.prepare")


@dataclass(frozen=True)
class PrepareReport:
    """``prepare``: every input row kept or rejected with a reason, and the split."""

    rows_in: int
    kept: int
    rejected: int
    rejected_by_reason: dict[str, int]
    splits: dict[str, dict[str, Any]]  # split → rows, share, malignant_fraction, lesions
    lesions: int
    lesions_in_two_splits: int
    schema: str
    sources: dict[str, dict[str, Any]]  # source → rows_in, kept, rejected, malignant, lesion_grouped, splits
    record: dict[str, Any] = field(repr=False)  # report.json

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PrepareReport:
        """The typed view of ``report.json`` (every field is at its top level)."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name != "record"}, record=record)

def _read_and_check(uri: str, root: str | None, storage_cfg: StorageConfig, image_cfg: ImageConfig
                    ) -> tuple[str | None, int | None, int | None]:
    try:
        data = images.read_image_bytes(uri, storage_cfg, image_cfg, root)
    except images.ImageError as exc:
        return exc.reason, None, None
    return images.check(data, image_cfg)


def check_images_batch(batch: pd.DataFrame, storage_cfg: StorageConfig, image_cfg: ImageConfig) -> pd.DataFrame:
    """Ray Data task body: one reason (or None) and the pixel size for each image URI."""
    roots = batch["image_root"] if "image_root" in batch else [None] * len(batch)
    results = [_read_and_check(u, r if isinstance(r, str) else None, storage_cfg, image_cfg)
               for u, r in zip(batch["image_uri"], roots)]
    return pd.DataFrame(
        {
            "_row": batch["_row"].to_numpy(),
            "reason": [r[0] for r in results],
            "width": pd.array([r[1] for r in results], dtype="Int32"),
            "height": pd.array([r[2] for r in results], dtype="Int32"),
        }
    )


def check_images(rows: pd.DataFrame, cfg: SkinrayConfig) -> pd.DataFrame:
    """Decode-check every image in parallel on Ray Data; returns ``_row, reason, width, height``."""
    if rows.empty:
        return pd.DataFrame({"_row": [], "reason": [], "width": [], "height": []})
    ensure_ray()
    blocks = max(cluster_cpus() * 4, int(np.ceil(len(rows) / ROWS_PER_BLOCK)))
    ds = dataset_from_frame(rows[["_row", "image_uri", "image_root"]].reset_index(drop=True), blocks)
    checked = ds.map_batches(
        check_images_batch,
        batch_format="pandas",
        batch_size=256,
        fn_kwargs={"storage_cfg": cfg.storage, "image_cfg": cfg.image},
        num_cpus=1,
    )
    result = checked.to_pandas()
    if len(result) != len(rows):  # never lose a row silently
        raise RuntimeError(f"image check returned {len(result)} rows for {len(rows)} inputs")
    return result


def _manifest_rejects(canon: pd.DataFrame, raw_cols: list[dict[str, str]], template: str) -> pd.Series:
    """First reason that applies to each row (or None), checked in a fixed order."""
    reason = pd.Series([None] * len(canon), index=canon.index, dtype="object")
    ids = canon["isic_id"]
    empty = ids.isna()
    reason[empty] = "empty_id"
    unsafe = ~empty & ids.fillna("").map(paths.unsafe_id)
    refs = canon["_image_ref"].fillna("")
    ref_unsafe = refs.map(lambda r: bool(r) and not paths.is_absolute(r) and paths.unsafe_ref(r))
    columns_unsafe = pd.Series([not ref and paths.unsafe_columns(template, cols) for ref, cols in zip(refs, raw_cols)],
                               index=canon.index)
    reason[reason.isna() & (unsafe | ref_unsafe | columns_unsafe)] = "unsafe_id"
    dup = ids.duplicated(keep="first") & ids.notna()
    reason[reason.isna() & dup] = "duplicate_id"
    reason[reason.isna() & canon["label"].isna()] = "unknown_label"
    return reason


def _report_counts(n_in: int, kept: pd.DataFrame, rejects: pd.DataFrame) -> dict[str, Any]:
    by_reason = rejects["reason"].value_counts().sort_index()
    return {
        "rows_in": n_in,
        "kept": int(len(kept)),
        "rejected": int(len(rejects)),
        "rejected_by_reason": {str(k): int(v) for k, v in by_reason.items()},
    }


def _inputs(p: PrepareConfig) -> list[SourceConfig]:
    """The sources to read: ``prepare.sources``, or the one ``prepare.manifest`` (named by its folder)."""
    if p.sources and p.manifest:
        raise SkinrayError("give --manifest or --source, not both")
    if p.sources:
        names = [s.name for s in p.sources]
        if len(set(names)) != len(names):
            raise SkinrayError(f"source names must be distinct: {names}")
        return list(p.sources)
    if not p.manifest:
        raise SkinrayError("prepare needs --manifest (or --source NAME MANIFEST [IMAGES], once per source)")
    folder = posixpath.basename(posixpath.dirname(storage.normalize(p.manifest).rstrip("/"))) or "default"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", folder)[:64]
    return [SourceConfig(name=name, manifest=p.manifest, images=p.images)]


def _read_source(src: SourceConfig, named: bool, cfg: SkinrayConfig) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """One source's rows in canonical columns, its image root in ``_images``, and the raw columns (templates)."""
    if not storage.exists(src.manifest, cfg.storage):
        raise SkinrayError(f"manifest not found: {src.manifest}")
    raw = schema.read_manifest(src.manifest, cfg.storage)
    if raw.empty:
        raise SkinrayError(f"manifest {src.manifest} has no rows")
    m = cfg.manifest
    canon = schema.to_canonical(raw, m.schema_name, m.malignant_dx)
    # a named source names every row; one manifest keeps its own source column where it has one
    canon["source"] = src.name if named else canon["source"].where(canon["source"].notna(), src.name)
    canon["_images"] = storage.normalize(src.images) if src.images else None
    log.info("read %s rows (%s schema) from %s", f"{len(raw):,}", canon.attrs["schema"], src.manifest)
    return canon, raw.astype("string").fillna("").to_dict("records")


def _read_sources(cfg: SkinrayConfig) -> tuple[pd.DataFrame, list[dict[str, str]], dict[str, str]]:
    """Every source's rows in one frame (``_row`` numbers them), their raw columns and each source's schema."""
    inputs = _inputs(cfg.prepare)
    parts = [_read_source(src, bool(cfg.prepare.sources), cfg) for src in inputs]
    canon = pd.concat([c for c, _ in parts], ignore_index=True)
    canon["_row"] = np.arange(len(canon))
    raw_cols = [row for _, rows in parts for row in rows]
    return canon, raw_cols, {src.name: c.attrs["schema"] for src, (c, _) in zip(inputs, parts)}


def _per_source(canon: pd.DataFrame, kept: pd.DataFrame, reason: pd.Series) -> dict[str, dict[str, Any]]:
    """Rows in, kept, rejected, malignant and split sizes of each source: what a reader of a pooled dataset checks."""
    out = {}
    for name, rows in canon.groupby("source", sort=True, dropna=False):
        part = kept[kept["source"] == name]
        out[str(name)] = {"rows_in": int(len(rows)), "kept": int(len(part)),
                          "rejected": int(reason.loc[rows.index].notna().sum()),
                          "malignant": int(part["label"].sum()),
                          "lesion_grouped": bool(rows["lesion_id"].notna().any()),
                          "splits": {s: int((part["split"] == s).sum()) for s in split.SPLITS}}
    return out


@dataclass(frozen=True)
class Cleaned:
    """Every input row with its reject reason (None = kept): what prepare splits, and what ``validate`` and
    ``calibrate`` score a clinic's labelled images from."""

    rows: pd.DataFrame  # canonical columns, ``_row``, ``image_uri`` (None where the row never got one)
    reason: pd.Series  # reject reason per row, None for a kept row
    schemas: dict[str, str]  # source → manifest schema

    @property
    def kept(self) -> pd.DataFrame:
        kept = self.rows.loc[self.reason.isna()].copy()
        kept["label"] = kept["label"].astype(int)
        return kept

    @property
    def rejects(self) -> pd.DataFrame:
        rejects = self.rows.loc[self.reason.notna(), ["isic_id", "image_uri"]].copy()
        rejects["reason"] = self.reason[self.reason.notna()]
        return rejects[schema.REJECT_COLUMNS].reset_index(drop=True)


def clean(cfg: SkinrayConfig) -> Cleaned:
    """Read every source, reject rows for their manifest faults, then decode-check the rest's images on Ray Data."""
    m = cfg.manifest
    paths.template_fields(m.image_template)  # a broken template is one error for the run, not one per row
    canon, raw_cols, schemas = _read_sources(cfg)
    reason = _manifest_rejects(canon, raw_cols, m.image_template)

    todo = canon[reason.isna()].copy()
    resolved = [paths.resolve_image_uri(rid, ref, root, m.image_template, raw_cols[i])
                for i, rid, ref, root in zip(todo["_row"], todo["isic_id"], todo["_image_ref"], todo["_images"])]
    todo["image_uri"] = [r[0] for r in resolved]
    todo["image_root"] = [r[1] for r in resolved]
    canon["image_uri"] = None
    canon.loc[todo.index, "image_uri"] = todo["image_uri"]

    log.info("checking %s images on Ray Data", f"{len(todo):,}")
    checked = check_images(todo, cfg).set_index("_row")
    image_reason = checked["reason"].reindex(canon["_row"]).to_numpy()
    reason = reason.where(reason.notna(), pd.Series(image_reason, index=canon.index))
    unreachable = int(reason.isin(images.RETRYABLE_REASONS).sum())
    if unreachable:  # a dataset missing images the bucket only failed to serve just now would be wrong for good
        raise TemporaryError(f"{unreachable} images could not be read now (storage unavailable, after "
                             f"{cfg.storage.read_attempts} tries each); nothing was written: run prepare again later")
    if reason.notna().all():
        raise SkinrayError(
            f"no usable rows in {', '.join(s.manifest for s in _inputs(cfg.prepare))}: all {len(canon)} rejected "
            f"({reason.value_counts().to_dict()})"
        )
    return Cleaned(canon, reason, schemas)


def prepare(cfg: SkinrayConfig) -> PrepareReport:
    """Run the whole stage; returns the report (also written to ``report.json``)."""
    p = cfg.prepare
    if not p.out:
        raise SkinrayError("prepare needs --out")
    started = time.time()
    cleaned = clean(cfg)
    canon, reason, schemas = cleaned.rows, cleaned.reason, cleaned.schemas
    kept, rejects = cleaned.kept, cleaned.rejects
    lesion_grouped = bool(kept["lesion_id"].notna().any())
    kept["lesion_id"] = kept["lesion_id"].fillna(kept["isic_id"])
    kept["split"] = split.assign_splits(kept["label"], kept["lesion_id"], p.val_fraction, p.test_fraction, p.seed,
                                        strata=kept["source"])

    impossible_ages = int(kept["_age_impossible"].sum())  # numbers that are no age: imputed like missing ones
    train_ages = kept.loc[kept["split"] == "train", "age_approx"]
    median_age = float(train_ages.median()) if train_ages.notna().any() else float(kept["age_approx"].median())
    if np.isnan(median_age):
        median_age = 50.0  # no ages at all: a neutral adult age, reported as imputed for every row
    imputed = {
        "age_approx": {"value": median_age, "rows": int(kept["age_approx"].isna().sum()),
                       "computed_on": "train split median", "impossible": impossible_ages},
        "anatom_site_general": {"value": "unknown", "rows": int(kept["anatom_site_general"].isna().sum())},
    }
    kept["age_approx"] = kept["age_approx"].fillna(median_age).astype("float32")
    kept["anatom_site_general"] = kept["anatom_site_general"].fillna("unknown")
    kept = kept.sort_values("_row")[schema.CANONICAL_COLUMNS].reset_index(drop=True)

    report: dict[str, Any] = {
        "manifest": p.manifest,
        "images": p.images,
        "schema": "+".join(sorted(set(schemas.values()))),
        "sources": _per_source(canon, kept, reason),
        **_report_counts(len(canon), kept, rejects),
        "lesion_grouped": lesion_grouped,
        "lesions": int(kept["lesion_id"].nunique()),
        "lesions_in_two_splits": int((kept.groupby("lesion_id")["split"].nunique() > 1).sum()),
        "splits": split.split_summary(kept),
        "malignant_fraction": round(float(kept["label"].mean()), 4),
        "imputed": imputed,
        "reason_meanings": {k: REJECT_REASONS[k] for k in sorted(set(rejects["reason"])) if k in REJECT_REASONS},
        "seconds": round(time.time() - started, 2),
        "versions": versions(),
    }
    warnings = [f"source {name}: no lesion ids, so each image counts as its own lesion; two images of one lesion "
                "can land in two splits and make its test figures optimistic"
                for name, s in report["sources"].items() if not s["lesion_grouped"]]
    if impossible_ages:
        warnings.append(f"{impossible_ages} ages were no age in years (negative, above {schema.AGE_MAX} or not "
                        "finite): read as unknown and imputed")
    if kept["label"].nunique() < 2:
        warnings.append("only one class is present: a classifier cannot be trained on this data")
    if warnings:
        report["warnings"] = warnings

    out = p.out
    storage.write_parquet(pa.Table.from_pandas(kept, preserve_index=False), storage.join(out, "manifest.parquet"),
                          cfg.storage)
    storage.write_parquet(pa.Table.from_pandas(rejects, preserve_index=False, schema=pa.schema(
        [("isic_id", pa.string()), ("image_uri", pa.string()), ("reason", pa.string())])),
        storage.join(out, "rejects.parquet"), cfg.storage)
    storage.write_text(storage.join(out, "config.yaml"), cfg.to_yaml(), cfg.storage)
    storage.write_json(storage.join(out, "report.json"), report, cfg.storage)
    log.info("kept %s of %s rows, rejected %s; wrote %s", f"{len(kept):,}", f"{len(canon):,}", f"{len(rejects):,}",
             out, extra={"event": {k: report[k] for k in ("rows_in", "kept", "rejected", "rejected_by_reason",
                                                          "lesions_in_two_splits", "seconds")}})
    return PrepareReport.from_record(report)


def data_fingerprint(uri: str, storage_cfg: StorageConfig | None = None) -> str:
    """SHA-256 of a prepared dataset's manifest: which rows and splits a model was trained on, recorded with it."""
    return hashlib.sha256(storage.read_bytes(storage.join(uri, "manifest.parquet"), storage_cfg)).hexdigest()


def load_prepared(uri: str, storage_cfg: StorageConfig | None = None) -> pd.DataFrame:
    """The kept rows of a finished ``prepare`` run, with a clear error when the directory is not one."""
    if not storage.exists(storage.join(uri, "report.json"), storage_cfg):
        raise SkinrayError(f"{uri} is not a prepared dataset (no report.json): run `skinray prepare` first")
    df = storage.read_parquet(storage.join(uri, "manifest.parquet"), storage_cfg).to_pandas()
    if "source" not in df:  # prepared before sources were recorded: one source, named by the folder it came from
        df["source"] = "unnamed"
    missing = set(schema.CANONICAL_COLUMNS) - set(df.columns)
    if missing:
        raise SkinrayError(f"{uri}/manifest.parquet lacks columns {sorted(missing)}")
    return df
