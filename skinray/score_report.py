"""What a scoring run shows people, written into ``OUT/runs/<run_id>/``: the score histogram, the most suspicious
images as a contact sheet and CSV, and — when the input carries labels — the evaluation metrics and plots.

The top of the ranking is ordered by the calibrated logit, which never ties where the model's outputs differ.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pandas as pd

from skinray import images, metrics, plots, storage
from skinray.artifact import ModelArtifact
from skinray.config import SkinrayConfig
from skinray.runs import run_dir


def top_suspicious(scored: pd.DataFrame, k: int) -> pd.DataFrame:
    return scored.sort_values(["logit_malignant", "input_row"], ascending=[False, True]).head(k)


def write(out: str, run_id: str, df: pd.DataFrame, artifact: ModelArtifact, cfg: SkinrayConfig) -> dict[str, Any]:
    """Pictures and (with labels) metrics for one run; returns ``{"pngs": [...], "metrics": {...}}``."""
    st, folder = cfg.storage, run_dir(out, run_id)
    scored = df[df["error"].isna()]
    threshold = artifact.threshold
    result: dict[str, Any] = {"pngs": [], "metrics": None}
    if scored.empty:
        return result
    prob = scored["prob_malignant"].to_numpy(float)
    labels = scored["label"] if "label" in scored and scored["label"].notna().all() else None
    y = None if labels is None else labels.to_numpy().astype(int)
    with tempfile.TemporaryDirectory() as tmp:
        files = [plots.plot_score_histogram(prob, os.path.join(tmp, "score_histogram.png"), threshold=threshold,
                                            y_true=y)]
        if y is not None and len(set(y.tolist())) == 2:
            report = metrics.full_report(y, prob, threshold, n_boot=cfg.metrics.bootstrap)
            storage.write_json(storage.join(folder, "metrics.json"), report, st)
            result["metrics"] = report
            files += [plots.plot_roc(y, prob, os.path.join(tmp, "roc.png"), threshold=threshold),
                      plots.plot_confusion(y, prob, threshold, os.path.join(tmp, "confusion.png")),
                      plots.plot_calibration(y, prob, os.path.join(tmp, "calibration.png"))]
        top = top_suspicious(scored, cfg.score.top_k)
        if len(top):
            storage.write_text(storage.join(folder, "top_suspicious.csv"),
                               top[["isic_id", "image_uri", "prob_malignant", "logit_malignant", "predicted",
                                    "dx_pred"]].to_csv(index=False), st)
            sheet = _contact_sheet(top, artifact, cfg, os.path.join(tmp, "top_suspicious.png"))
            files += [sheet] if sheet else []
        for path in files:
            with open(path, "rb") as f:
                storage.write_bytes(storage.join(folder, os.path.basename(path)), f.read(), st)
        result["pngs"] = [os.path.basename(p) for p in files]
    return result


def _contact_sheet(rows: pd.DataFrame, artifact: ModelArtifact, cfg: SkinrayConfig, path: str) -> str | None:
    image_cfg = artifact.image_config(cfg.image)
    arrays, captions, flags = [], [], []
    for r in rows.itertuples():
        try:
            arrays.append(images.load(r.image_uri, cfg.storage, image_cfg, getattr(r, "image_root", None)))
        except images.ImageError:
            continue  # the image changed since it was scored: leave it off the sheet
        dx = f" {r.dx_pred}" if isinstance(getattr(r, "dx_pred", None), str) else ""
        captions.append(f"{r.isic_id}\n{r.prob_malignant:.3f} {r.predicted}{dx}")
        flags.append(r.predicted == "malignant")
    return plots.contact_sheet(arrays, captions, path, highlight=flags) if arrays else None
