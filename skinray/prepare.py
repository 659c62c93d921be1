"""manifest + images → ``prepared/``: clean, checked, split, with every input row accounted for.

Outputs: ``manifest.parquet`` (kept rows, canonical columns), ``rejects.parquet`` (``isic_id, image_uri,
reason``), ``report.json`` (written last: its presence means the directory is complete) and ``config.yaml``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from skinray import SkinrayError, images, paths, schema, split, storage
from skinray.config import ImageConfig, SkinrayConfig
from skinray.runtime import cluster_cpus, dataset_from_frame, ensure_ray, versions
from skinray.results import PrepareReport
from skinray.storage import StorageConfig

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


def prepare(cfg: SkinrayConfig) -> PrepareReport:
    """Run the whole stage; returns the report (also written to ``report.json``)."""
    p = cfg.prepare
    if not p.manifest:
        raise SkinrayError("prepare needs --manifest")
    if not p.out:
        raise SkinrayError("prepare needs --out")
    started = time.time()
    if not storage.exists(p.manifest, cfg.storage):
        raise SkinrayError(f"manifest not found: {p.manifest}")
    raw = schema.read_manifest(p.manifest, cfg.storage)
    if raw.empty:
        raise SkinrayError(f"manifest {p.manifest} has no rows")
    m = cfg.manifest
    paths.template_fields(m.image_template)  # a broken template is one error for the run, not one per row
    canon = schema.to_canonical(raw, m.schema_name, m.malignant_dx)
    used_schema = canon.attrs["schema"]
    log.info("read %s rows (%s schema) from %s", f"{len(raw):,}", used_schema, p.manifest)
    canon["_row"] = np.arange(len(canon))
    raw_cols = raw.astype("string").fillna("").to_dict("records")
    reason = _manifest_rejects(canon, raw_cols, m.image_template)

    images_root = storage.normalize(p.images) if p.images else None
    todo = canon[reason.isna()].copy()
    resolved = [paths.resolve_image_uri(rid, ref, images_root, m.image_template, raw_cols[i])
                for i, rid, ref in zip(todo["_row"], todo["isic_id"], todo["_image_ref"])]
    todo["image_uri"] = [r[0] for r in resolved]
    todo["image_root"] = [r[1] for r in resolved]
    canon["image_uri"] = None
    canon.loc[todo.index, "image_uri"] = todo["image_uri"]

    log.info("checking %s images on Ray Data", f"{len(todo):,}")
    checked = check_images(todo, cfg).set_index("_row")
    image_reason = checked["reason"].reindex(canon["_row"]).to_numpy()
    reason = reason.where(reason.notna(), pd.Series(image_reason, index=canon.index))

    rejects = canon.loc[reason.notna(), ["isic_id", "image_uri"]].copy()
    rejects["reason"] = reason[reason.notna()]
    kept = canon.loc[reason.isna()].copy()
    if kept.empty:
        raise SkinrayError(
            f"no usable rows in {p.manifest}: all {len(canon)} rejected "
            f"({rejects['reason'].value_counts().to_dict()})"
        )

    kept["label"] = kept["label"].astype(int)
    lesion_grouped = bool(kept["lesion_id"].notna().any())
    kept["lesion_id"] = kept["lesion_id"].fillna(kept["isic_id"])
    kept["split"] = split.assign_splits(kept["label"], kept["lesion_id"], p.val_fraction, p.test_fraction, p.seed)

    train_ages = kept.loc[kept["split"] == "train", "age_approx"]
    median_age = float(train_ages.median()) if train_ages.notna().any() else float(kept["age_approx"].median())
    if np.isnan(median_age):
        median_age = 50.0  # no ages at all: a neutral adult age, reported as imputed for every row
    imputed = {
        "age_approx": {"value": median_age, "rows": int(kept["age_approx"].isna().sum()),
                       "computed_on": "train split median"},
        "anatom_site_general": {"value": "unknown", "rows": int(kept["anatom_site_general"].isna().sum())},
    }
    kept["age_approx"] = kept["age_approx"].fillna(median_age).astype("float32")
    kept["anatom_site_general"] = kept["anatom_site_general"].fillna("unknown")
    kept = kept.sort_values("_row")[schema.CANONICAL_COLUMNS].reset_index(drop=True)
    rejects = rejects[schema.REJECT_COLUMNS].reset_index(drop=True)

    report: dict[str, Any] = {
        "manifest": p.manifest,
        "images": p.images,
        "schema": used_schema,
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
    if kept["label"].nunique() < 2:
        report["warnings"] = ["only one class is present: a classifier cannot be trained on this data"]

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
    missing = set(schema.CANONICAL_COLUMNS) - set(df.columns)
    if missing:
        raise SkinrayError(f"{uri}/manifest.parquet lacks columns {sorted(missing)}")
    return df
