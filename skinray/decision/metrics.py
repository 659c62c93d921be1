"""The one metrics module for skinray: evaluation and batch scoring both call it, so "AUC" means one thing.

Inputs follow :mod:`skinray.decision.inputs` (label 1 = malignant; predicted malignant when ``prob >= threshold``;
bad inputs raise ``ValueError``); the intervals around these figures live in :mod:`skinray.decision.intervals`.
Metrics come from scikit-learn wherever it has them; outputs are plain Python types (JSON-serialisable), with
undefined values (NaN, e.g. precision when nothing is predicted positive) reported as ``None``.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from skinray.decision.inputs import ArrayLike, check_threshold, sklearn_metrics, two_classes, validate
from skinray.decision.intervals import bootstrap_auc_ci, proportion_ci

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

# --- constants -------------------------------------------------------------------------------------------------

POS_LABEL = 1  # malignant
CLASS_NAMES = ("benign", "malignant")
DEFAULT_THRESHOLD = 0.5
ECE_BINS = 10  # equal-width bins on [0, 1], binned exactly like sklearn.calibration.calibration_curve("uniform")
SPEC_TARGET = 0.90  # sensitivity_at_90_specificity: max TPR with FPR <= 1 - SPEC_TARGET
SENS_TARGET = 0.90  # specificity_at_90_sensitivity: max TNR with TPR >= SENS_TARGET
ROC_TOL = 1e-12  # float slack when comparing rates read off roc_curve against targets
AGE_BANDS = ("<30", "30-44", "45-59", "60-74", "75+", "unknown")
AGE_EDGES = (30, 45, 60, 75)  # lower edges of bands 2..5
AGE_MAX = 130  # ages above this (or negative) are data errors -> "unknown"
ONE_CLASS_WARNING = (
    "y_true contains only one class ({cls}); roc_auc, pr_auc, sensitivity_at_90_specificity, "
    "specificity_at_90_sensitivity and the AUC confidence interval need both classes and are None"
)


# --- outputs ---------------------------------------------------------------------------------------------------


def _py(x: Any) -> Any:
    """numpy scalar → Python scalar, NaN/inf → None (keeps json.dumps(..., allow_nan=False) happy)."""
    if x is None:
        return None
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


# --- threshold metrics -----------------------------------------------------------------------------------------


def threshold_metrics(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> dict:
    """Confusion-matrix metrics at one operating point (predict malignant when prob >= threshold).

    Undefined ratios (e.g. recall with no positives) are None rather than 0, so they are not mistaken for
    a bad model.
    """
    sk = sklearn_metrics()
    y, p = validate(y_true, prob)
    t = check_threshold(threshold)
    pred = (p >= t).astype(np.int64)
    tn, fp, fn, tp = sk.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    nan = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined cases are reported as None below
        sens = sk.recall_score(y, pred, pos_label=1, zero_division=nan)
        spec = sk.recall_score(y, pred, pos_label=0, zero_division=nan)
        out = {
            "threshold": t,
            "n": int(len(y)),
            "accuracy": sk.accuracy_score(y, pred),
            "precision": sk.precision_score(y, pred, pos_label=1, zero_division=nan),
            "recall": sens,
            "sensitivity": sens,
            "specificity": spec,
            "npv": sk.precision_score(y, pred, pos_label=0, zero_division=nan),
            "f1": sk.f1_score(y, pred, pos_label=1, zero_division=nan),
            # needs both classes: with one class sklearn would silently return the single recall
            "balanced_accuracy": sk.balanced_accuracy_score(y, pred) if two_classes(y) else None,
            "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        }
    return {k: (v if isinstance(v, dict) else _py(v)) for k, v in out.items()}


# --- ranking / calibration metrics -----------------------------------------------------------------------------


def _bin_ids(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin index per prediction, identical to sklearn's calibration_curve(strategy='uniform')."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)


def expected_calibration_error(y_true: ArrayLike, prob: ArrayLike, n_bins: int = ECE_BINS) -> float:
    """ECE = sum_b (n_b / n) * |mean(y in b) - mean(p in b)| over equal-width bins.

    sklearn has no ECE; the binning is calibration_curve's, so ECE matches the reliability diagram.
    """
    y, p = validate(y_true, prob)
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    ids = _bin_ids(p, int(n_bins))
    sum_y = np.bincount(ids, weights=y.astype(np.float64), minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / len(y))


def _sens_at_spec(y: np.ndarray, p: np.ndarray, spec_target: float = SPEC_TARGET) -> float:
    sk = sklearn_metrics()
    fpr, tpr, _ = sk.roc_curve(y, p, pos_label=1, drop_intermediate=False)
    return float(tpr[fpr <= 1.0 - spec_target + ROC_TOL].max())  # (0, 0) is always on the curve


def _spec_at_sens(y: np.ndarray, p: np.ndarray, sens_target: float = SENS_TARGET) -> float:
    sk = sklearn_metrics()
    fpr, tpr, _ = sk.roc_curve(y, p, pos_label=1, drop_intermediate=False)
    return float((1.0 - fpr[tpr >= sens_target - ROC_TOL]).max())  # (1, 1) is always on the curve


def ranking_metrics(y_true: ArrayLike, prob: ArrayLike) -> dict:
    """Threshold-free metrics: discrimination (ROC/PR AUC, sens@spec), calibration (Brier, ECE, log loss).

    With a single class the metrics that need both classes are None (see full_report for the warning).
    """
    sk = sklearn_metrics()
    y, p = validate(y_true, prob)
    both = two_classes(y)
    n_pos = int(y.sum())
    out = {
        "n": int(len(y)),
        "n_pos": n_pos,
        "prevalence": n_pos / len(y),
        "roc_auc": sk.roc_auc_score(y, p) if both else None,
        "pr_auc": sk.average_precision_score(y, p, pos_label=1) if both else None,
        "brier": sk.brier_score_loss(y, p, pos_label=1),
        "log_loss": sk.log_loss(y, p, labels=[0, 1]),
        "ece": expected_calibration_error(y, p, ECE_BINS),
        "sensitivity_at_90_specificity": _sens_at_spec(y, p) if both else None,
        "specificity_at_90_sensitivity": _spec_at_sens(y, p) if both else None,
    }
    return {k: _py(v) for k, v in out.items()}


# --- reports ---------------------------------------------------------------------------------------------------


def full_report(y_true: ArrayLike, prob: ArrayLike, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict:
    """Everything evaluation and batch scoring publish, as one JSON-ready dict. Never raises on a single class."""
    y, p = validate(y_true, prob)
    t = check_threshold(threshold)
    warn: list[str] = []
    ci: list[float] | None = None
    if two_classes(y):
        ci = list(bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed))
    else:
        warn.append(ONE_CLASS_WARNING.format(cls=f"{int(y[0])} = {CLASS_NAMES[int(y[0])]}"))
    return {
        "n": int(len(y)),
        "n_pos": int(y.sum()),
        "ranking": ranking_metrics(y, p),
        "roc_auc_ci95": ci,
        "at_0.5": threshold_metrics(y, p, DEFAULT_THRESHOLD),
        "at_threshold": threshold_metrics(y, p, t),
        "warnings": warn,
    }


def _group_sort_key(keys: list[Any]) -> list[Any]:
    if all(k in AGE_BANDS for k in keys):
        return sorted(keys, key=AGE_BANDS.index)
    present = [k for k in keys if k is not None]
    try:
        ordered = sorted(present)
    except TypeError:
        ordered = sorted(present, key=str)
    return ordered + ([None] if len(present) < len(keys) else [])


def grouped_report(
    df: "pd.DataFrame",
    by: str,
    threshold: float,
    label_col: str = "label",
    prob_col: str = "prob_malignant",
    min_n: int = 20,
) -> list[dict]:
    """Per-subgroup n, n_pos, ROC AUC (None below min_n or with one class), sensitivity and specificity with their
    exact 95% intervals.

    Missing group values form their own group with ``group: None``. Age bands come out in age order.
    """
    sk = sklearn_metrics()
    missing = [c for c in (by, label_col, prob_col) if c not in df.columns]
    if missing:
        raise ValueError(f"grouped_report: column(s) {missing} not in DataFrame (has {list(df.columns)})")
    t = check_threshold(threshold)
    if len(df) == 0:
        return []
    y_all, p_all = validate(df[label_col].to_numpy(), df[prob_col].to_numpy())
    import pandas as pd

    codes = df[by].to_numpy(dtype=object)
    groups: dict[Any, list[int]] = {}
    for i, g in enumerate(codes):
        g = None if g is None or g is pd.NA or (isinstance(g, float) and math.isnan(g)) else (
            g.item() if hasattr(g, "item") else g)
        groups.setdefault(g, []).append(i)
    rows = []
    for g in _group_sort_key(list(groups)):
        ix = np.asarray(groups[g])
        y, p = y_all[ix], p_all[ix]
        tm = threshold_metrics(y, p, t)
        auc = sk.roc_auc_score(y, p) if (len(y) >= min_n and two_classes(y)) else None
        cm = tm["confusion"]
        rows.append(
            {
                "group": g,
                "n": int(len(y)),
                "n_pos": int(y.sum()),
                "roc_auc": _py(auc),
                "sensitivity": tm["sensitivity"],
                "sensitivity_ci95": proportion_ci(cm["tp"], cm["tp"] + cm["fn"]),
                "specificity": tm["specificity"],
                "specificity_ci95": proportion_ci(cm["tn"], cm["tn"] + cm["fp"]),
            }
        )
    return rows


def age_band(age: Any) -> str:
    """Bucket an age in years into one of AGE_BANDS; missing/unparseable/implausible ages → 'unknown'."""
    if age is None or isinstance(age, (bool, np.bool_)):
        return "unknown"
    try:
        a = float(age)
    except (TypeError, ValueError):
        return "unknown"
    if not math.isfinite(a) or a < 0 or a > AGE_MAX:
        return "unknown"
    for band, edge in zip(AGE_BANDS, AGE_EDGES):
        if a < edge:
            return band
    return AGE_BANDS[4]


# --- diagnosis (multiclass) ------------------------------------------------------------------------------------


def multiclass_report(y_true: ArrayLike, pred: ArrayLike, classes: list[str]) -> dict:
    """Diagnosis-level metrics: balanced multiclass accuracy (the ISIC 2018 Task 3 metric), recall per class and
    the confusion matrix (rows: true, columns: predicted, both in ``classes`` order).

    Rows whose true diagnosis is missing or not one of ``classes`` are counted in ``unscored`` and left out.
    """
    sk = sklearn_metrics()
    truth = np.asarray(y_true, dtype=object)
    predicted = np.asarray(pred, dtype=object)
    if len(truth) != len(predicted):
        raise ValueError(f"length mismatch: {len(truth)} true diagnoses, {len(predicted)} predictions")
    known = np.isin(truth, list(classes))
    t, p = truth[known].astype(str), predicted[known].astype(str)
    out: dict[str, Any] = {"classes": list(classes), "n": int(known.sum()), "unscored": int((~known).sum())}
    if not len(t):
        return {**out, "balanced_accuracy": None, "accuracy": None, "recall": {}, "confusion": []}
    cm = sk.confusion_matrix(t, p, labels=list(classes))
    support = cm.sum(axis=1)
    recall = {c: (_py(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    present = [r for r in recall.values() if r is not None]
    return {**out, "balanced_accuracy": _py(np.mean(present)), "accuracy": _py(np.trace(cm) / len(t)),
            "recall": recall, "support": {c: int(s) for c, s in zip(classes, support)}, "confusion": cm.tolist()}
