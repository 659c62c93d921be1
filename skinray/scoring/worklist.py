"""The clinician's worklist of a scoring run: every image the model flagged, most suspicious first.

``runs/<run_id>/worklist.csv`` (written here, called by :mod:`skinray.scoring.report`) holds EVERY image of the run
whose call is ``malignant`` — no cut-off — ordered by the calibrated logit (descending; ties by image id, then by
input row), with its rank, ``prob_malignant``, ``confidence``, the most likely diagnosis and that diagnosis'
probability (empty for a model without a diagnosis output) and the full-size image's URI (``s3://…`` or a local
path). Its row count is ``run.json``'s ``flagged``.

The other lists of a run hold something else: ``out_of_distribution.csv`` the images the out-of-distribution guard
flagged (no benign/malignant call is made for them, so they are never in the worklist: review the image itself),
``top_suspicious.csv`` the ``score.top_k`` highest logits whatever the call (for the contact sheet). The review page
shows the worklist's first ``score.top_k`` as cards with thumbnails and all of it as a table, each row linked to
its full-size image (:func:`link`).
"""

from __future__ import annotations

import json
import os
import posixpath
import urllib.parse
from pathlib import Path
from typing import Any

import pandas as pd

from skinray.config import StorageConfig
from skinray.io import storage

FILE = "worklist.csv"
COLUMNS = ["rank", "isic_id", "prob_malignant", "logit_malignant", "confidence", "dx_pred", "dx_pred_prob",
           "image_uri"]


def flagged(scored: pd.DataFrame) -> pd.DataFrame:
    """The rows called malignant, most suspicious first (a stable order: ties by image id, then input row)."""
    rows = scored[scored["predicted"] == "malignant"]
    keys = [k for k in ("logit_malignant", "isic_id", "input_row") if k in rows]
    return rows.sort_values(keys, ascending=[False] + [True] * (len(keys) - 1), kind="mergesort")


def dx_probability(probs: Any, dx: Any) -> float | None:
    """The probability of diagnosis ``dx`` in a row's ``dx_probs``: JSON text as scoring writes it, or the table's
    map read back (a list of pairs, or a dict)."""
    if not isinstance(dx, str) or probs is None or (isinstance(probs, float) and probs != probs):
        return None
    if isinstance(probs, str):
        probs = json.loads(probs)
    value = (probs if isinstance(probs, dict) else dict(probs)).get(dx)
    return None if value is None else float(value)


def table(scored: pd.DataFrame) -> pd.DataFrame:
    """The worklist: one row per flagged image, :data:`COLUMNS`, in review order."""
    rows = flagged(scored)
    dx = rows["dx_pred"] if "dx_pred" in rows else pd.Series(None, index=rows.index, dtype=object)
    probs = rows["dx_probs"] if "dx_probs" in rows else pd.Series(None, index=rows.index, dtype=object)
    return pd.DataFrame({
        "rank": range(1, len(rows) + 1), "isic_id": rows["isic_id"].astype(str).to_numpy(),
        "prob_malignant": rows["prob_malignant"].to_numpy(float),
        "logit_malignant": rows["logit_malignant"].to_numpy(float),
        "confidence": rows["confidence"].to_numpy(float),
        "dx_pred": [d if isinstance(d, str) else None for d in dx],
        "dx_pred_prob": [dx_probability(p, d) for p, d in zip(probs, dx)],
        "image_uri": rows["image_uri"].astype(str).to_numpy()}, columns=COLUMNS)


def write(folder: str, scored: pd.DataFrame, storage_cfg: StorageConfig) -> pd.DataFrame:
    """Write ``folder/worklist.csv`` (a header only when nothing was flagged) and return its rows."""
    rows = table(scored)
    storage.write_text(storage.join(folder, FILE), rows.to_csv(index=False), storage_cfg)
    return rows


def link(image_uri: str, page_folder: str) -> str | None:
    """Where a page in ``page_folder`` links the full-size image: a relative URL when both are local (the page
    keeps working when the output folder and the images move together), a ``file://`` URL for a local image from a
    page kept elsewhere, and nothing for ``s3://`` — a browser cannot open it, an https URL of a private bucket is
    refused, and a presigned one expires and hands the image to whoever holds the page: the page shows the URI as
    text to copy instead."""
    if storage.is_s3(image_uri):
        return None
    path = storage.normalize(image_uri)
    if storage.is_s3(page_folder):
        return Path(path).as_uri()
    rel = os.path.relpath(path, storage.normalize(page_folder))
    return urllib.parse.quote(posixpath.join(*rel.split(os.sep)))
