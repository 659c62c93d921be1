"""Lesion-grouped k-fold cross-validation over train+val, for the choices one small validation split makes badly.

HAM10000's validation split holds 157 malignant images. A threshold promised at 95% confidence from 157 positives
has to sit well inside what new data needs, and the best epoch picked on 802 images flatters the model (validation
AUC sat 0.035-0.046 above test in every run). With ``train.folds: k`` every train+val image is scored by a fold
model that never saw its lesion, and the epoch count, calibration, threshold and flip band are chosen on those
out-of-fold scores (about 1,550 positives); the final model then trains on all of train+val for that many epochs.

This module owns the folds, the per-fold result files (``{storage}/{run}/cv/fold-I-of-K.json``: written as each
fold finishes, so a killed cross-validation goes on at the next fold, and checked against the fold's rows when read
back) and the choice of epoch count. The Ray Train runs themselves are :mod:`skinray.train.fold_runs`'s.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skinray import SkinrayError
from skinray.data.prepared import dx_codes
from skinray.io import storage
from skinray.io.storage import StorageConfig

log = logging.getLogger("skinray.train")
FOLD_FILE = "fold-{fold}-of-{folds}.json"
FOLD_FORMAT = 1


def assign_folds(rows: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Fold number (0 … folds-1) of each row: whole lesions per fold, each diagnosis and label spread evenly.

    A one-line error when the rows cannot make ``folds`` folds that each train and score both classes.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = rows["lesion_id"].astype(str).to_numpy()
    if len(set(groups)) < folds:
        raise SkinrayError(f"train.folds {folds} needs at least {folds} lesions in train+val, got {len(set(groups))}")
    strata = rows["label"].astype(str).str.cat(dx_codes(rows).fillna("").astype(str), sep="/").to_numpy()
    out = np.full(len(rows), -1, dtype=int)
    with warnings.catch_warnings():  # "the least populated class has only n members": a rare diagnosis, expected
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        for fold, (_, held) in enumerate(splitter.split(np.zeros(len(rows)), strata, groups)):
            out[held] = fold
    labels = rows["label"].to_numpy(int)
    for fold in range(folds):
        held, kept = labels[out == fold], labels[out != fold]
        if len(set(held)) < 2 or len(set(kept)) < 2:
            raise SkinrayError(f"train.folds {folds}: fold {fold + 1} would hold or train on one class only "
                               f"({int(labels.sum())} malignant of {len(labels)} train+val images); use fewer folds")
    return out


@dataclass(frozen=True)
class FoldResult:
    """What one fold leaves: its held-out rows' logits through the fold model's exported graph, per view."""

    fold: int  # 0-based
    folds: int
    isic_id: list[str]
    views: np.ndarray  # rows × views (3 flips with train.tta, else 1), raw logits
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_auc(self) -> float | None:
        return next((r.get("val_auc") for r in self.history if r["epoch"] == self.best_epoch), None)


def choose_epochs(results: list[FoldResult]) -> tuple[int, dict[int, float]]:
    """The epoch count for the final model: where the folds' mean held-out AUC peaks, over the epochs every fold
    ran (early stopping ends folds at different epochs); the first of equal peaks. Also returns that mean curve.

    Where no epoch has a held-out AUC in every fold, the median of the folds' best epochs.
    """
    if not results or any(not r.history for r in results):
        raise ValueError("every fold needs a history")
    common = sorted(set.intersection(*({h["epoch"] for h in r.history} for r in results)))
    auc = [{h["epoch"]: h.get("val_auc") for h in r.history} for r in results]
    curve = {e: float(np.mean([a[e] for a in auc])) for e in common if all(a[e] is not None for a in auc)}
    if curve:
        return max(curve, key=lambda e: (curve[e], -e)), curve
    return int(np.median([r.best_epoch for r in results])), {}


def fold_uri(run_dir: str, fold: int, folds: int) -> str:
    return storage.join(run_dir, "cv", FOLD_FILE.format(fold=fold + 1, folds=folds))


def save_fold(run_dir: str, result: FoldResult, storage_cfg: StorageConfig) -> None:
    storage.write_json(fold_uri(run_dir, result.fold, result.folds), {
        "format": FOLD_FORMAT, "fold": result.fold, "folds": result.folds, "isic_id": result.isic_id,
        "views": result.views.astype(float).tolist(), "best_epoch": result.best_epoch, "history": result.history},
        storage_cfg)


def load_fold(run_dir: str, fold: int, folds: int, isic_id: list[str], n_views: int,
              storage_cfg: StorageConfig) -> FoldResult | None:
    """A finished fold's result, or None when there is none or it does not match the fold's rows (then the fold
    runs again: its Ray Train checkpoint makes that an export, not a training)."""
    uri = fold_uri(run_dir, fold, folds)
    if not storage.exists(uri, storage_cfg):
        return None
    try:
        saved = storage.read_json(uri, storage_cfg)
        views = np.asarray(saved["views"], dtype=np.float64)
        ok = (saved.get("format") == FOLD_FORMAT and saved["fold"] == fold and saved["folds"] == folds
              and saved["isic_id"] == isic_id and views.shape == (len(isic_id), n_views)
              and bool(np.isfinite(views).all()) and isinstance(saved["best_epoch"], int))
        if ok:
            return FoldResult(fold, folds, list(isic_id), views, saved["best_epoch"], list(saved["history"]))
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s is unreadable (%s): running the fold again", uri, exc)
        return None
    log.warning("%s does not match this fold's rows or views: running the fold again", uri)
    return None


def out_of_fold(assignment: np.ndarray, results: list[FoldResult]) -> np.ndarray:
    """Every row's held-out logits (rows × views), in the rows' order."""
    n_views = results[0].views.shape[1]
    out = np.full((len(assignment), n_views), np.nan)
    for r in results:
        out[assignment == r.fold] = r.views
    if np.isnan(out).any():
        raise SkinrayError("cross-validation left rows without an out-of-fold score")
    return out


def summary(assignment: np.ndarray, labels: np.ndarray, results: list[FoldResult], epochs: int,
            curve: dict[int, float]) -> dict[str, Any]:
    """``skinray.json``'s ``training.cross_validation``: the folds, what each chose, the epoch count and why."""
    return {
        "folds": len(results),
        "grouped_by": "lesion_id", "stratified_by": "label and diagnosis",
        "per_fold": [{"fold": r.fold + 1, "rows": int((assignment == r.fold).sum()),
                      "malignant": int(labels[assignment == r.fold].sum()), "best_epoch": r.best_epoch,
                      "held_out_auc": r.best_auc} for r in results],
        "mean_held_out_auc_by_epoch": {str(e): round(a, 5) for e, a in curve.items()},
        "epochs": epochs,
    }
