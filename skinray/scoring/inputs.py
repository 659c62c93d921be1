"""What a scoring run reads: declared, never guessed, and every row accounted for.

A file is a manifest (CSV, Parquet, JSON lines; either schema); a folder or prefix is images only — a ``.parquet``
inside never turns it into a manifest (``score.input_kind: manifest`` reads a Parquet folder as one). Rows carry
``image_root``, the folder their image must stay inside, which every read enforces, and their identity within a
night: ``image_key`` (the image URI; a manifest row without one: the manifest and its row) and ``image_stamp``
(size and modification time, from the listing: new bytes at the same path are a new answer).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from skinray import SkinrayError
from skinray.config import ManifestConfig
from skinray.data import images, schema
from skinray.io import paths, storage
from skinray.io.storage import StorageConfig

log = logging.getLogger("skinray.score")
CARRIED_COLUMNS = ["label", "benign_malignant", "dx", "age_approx", "sex", "anatom_site_general", "lesion_id"]


@dataclass
class ScoringInput:
    rows: pd.DataFrame  # input_row, isic_id, image_uri, image_root, carried columns
    kind: str  # images | manifest
    skipped: dict[str, int] = field(default_factory=dict)  # what a folder walk left out, by reason
    nulled: dict[str, int] = field(default_factory=dict)  # manifest values read as unknown, by column (no-age ages)
    root: str | None = None  # the folder the images must stay inside: the folder, or a manifest's --images


def check_not_nested(input_uri: str, out_uri: str) -> None:
    """``--out`` inside ``--input`` (or the reverse) would read its own output as input on the next night.

    Local paths are compared with symlinks resolved: a link is no way around the rule.
    """
    a, b = (p if storage.is_s3(p) else os.path.realpath(p) for p in map(storage.normalize, (input_uri, out_uri)))
    if a == b or b.startswith(a.rstrip("/") + "/") or a.startswith(b.rstrip("/") + "/"):
        raise SkinrayError(f"--out {out_uri} and --input {input_uri} overlap: keep the output outside the input "
                           "(and the input outside the output)")


def load(input_uri: str, kind: str, images_root: str | None, manifest: ManifestConfig,
         storage_cfg: StorageConfig) -> ScoringInput:
    """Any accepted input → one row per input, in a stable order, with ``input_row`` 0..n-1."""
    uri = storage.normalize(input_uri)
    if not storage.exists(uri, storage_cfg):
        raise SkinrayError(f"input not found: {input_uri}")
    folder = storage.is_dir(uri, storage_cfg)
    if kind == "images" and not folder:
        raise SkinrayError(f"--input {input_uri} is a file, but score.input_kind is images")
    if folder and kind != "manifest":
        listing = paths.list_images(uri, storage_cfg)
        if not listing.files:
            raise SkinrayError(f"no .jpg/.jpeg/.png images under {input_uri} (left out: {listing.skipped or 'none'})")
        rows = pd.DataFrame({"isic_id": [paths.stem(f) for f in listing.files], "image_uri": listing.files,
                             "image_root": uri, "image_stamp": [listing.stamps.get(f, "") for f in listing.files]})
        for col in CARRIED_COLUMNS:
            rows[col] = None
        result = ScoringInput(rows, "images", dict(listing.skipped), root=uri)
    else:
        rows, nulled = _manifest_rows(uri, images_root, manifest, storage_cfg)
        result = ScoringInput(rows, "manifest", nulled=nulled,
                              root=storage.normalize(images_root) if images_root else None)
    result.rows.insert(0, "input_row", np.arange(len(result.rows), dtype=np.int64))
    rows = result.rows
    key = rows["image_uri"].where(rows["image_uri"].notna(), uri + "#row" + rows["input_row"].astype(str))
    repeat = key.groupby(key).cumcount()  # a manifest naming one image twice: each row keeps its own answer
    rows["image_key"] = key.where(repeat == 0, key + "#" + repeat.astype(str)).astype(object)
    if "image_stamp" not in rows:
        known = paths.stamps(rows["image_uri"].dropna().unique().tolist(), storage_cfg)
        rows["image_stamp"] = [known.get(u, "") if isinstance(u, str) else "" for u in rows["image_uri"]]
    return result


def _manifest_rows(uri: str, images_root: str | None, manifest: ManifestConfig,
                   storage_cfg: StorageConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """The manifest's rows (an ``input_error`` where one cannot be scored) and the values read as unknown."""
    raw = schema.read_manifest(uri, storage_cfg)
    if raw.empty:
        raise SkinrayError(f"manifest {uri} has no rows")
    canon = schema.to_canonical(raw, manifest.schema_name, manifest.malignant_dx, labels_required=False)
    for col in ("isic_id", "_image_ref"):  # an empty cell, a Parquet or JSON null: None, never pd.NA
        canon[col] = canon[col].astype("object").where(canon[col].notna(), None)
    root = storage.normalize(images_root) if images_root else None
    raw_cols = raw.astype("string").fillna("").to_dict("records")
    uris: list[str | None] = []
    roots: list[str | None] = []
    errors: list[str | None] = []
    for rid, ref, cols in zip(canon["isic_id"], canon["_image_ref"], raw_cols):
        reason = _unsafe_reason(rid, ref, manifest.image_template, cols)
        if reason:
            uris.append(None)
            roots.append(None)
            errors.append(reason)
            continue
        image_uri, image_root = paths.resolve_image_uri(rid or "", ref, root, manifest.image_template, cols)
        uris.append(image_uri)
        roots.append(image_root)
        errors.append(None)
    canon["image_uri"] = uris
    canon["image_root"] = roots
    canon["input_error"] = errors
    nulled = {"age_approx": int(canon["_age_impossible"].sum())}
    if nulled["age_approx"]:
        log.warning("%s: %d ages were no age in years (negative, above %d or not finite): scored as unknown", uri,
                    nulled["age_approx"], schema.AGE_MAX)
    rows = canon[["isic_id", "image_uri", "image_root", "input_error", *CARRIED_COLUMNS]].reset_index(drop=True)
    return rows, {k: v for k, v in nulled.items() if v}


def _unsafe_reason(row_id: str | None, ref: str | None, template: str, columns: dict[str, str]) -> str | None:
    """Why a manifest row cannot be scored before any file is touched (its ``error``), or None."""
    if row_id is None and not ref:
        return images.row_error("empty_id", "the row has no image id or image_uri")
    if ref:
        return (images.row_error("unsafe_id", "the image_uri climbs out of the image root") if paths.unsafe_ref(ref)
                else None)
    if row_id is not None and paths.unsafe_id(row_id):
        return images.row_error("unsafe_id", "the id would address a file outside the image root")
    if paths.unsafe_columns(template, columns):
        return images.row_error("unsafe_id",
                                "a column of the image template would address a file outside the image root")
    return None
