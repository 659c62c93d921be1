"""The one metrics module for skinray: evaluation and batch scoring both call it, so "AUC" means one thing.

Conventions (shared by every function here):

* label 1 = malignant (the positive class), 0 = benign; ``prob`` is P(malignant) in [0, 1];
* a case is predicted malignant when ``prob >= threshold`` (the same rule ``roc_curve`` thresholds follow);
* metrics come from scikit-learn wherever it has them; outputs are plain Python types (JSON-serialisable),
  with undefined values (NaN, e.g. precision when nothing is predicted positive) reported as ``None``;
* bad inputs (length mismatch, NaN or out-of-range probabilities, labels other than 0/1) raise ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

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
BOOT_CELLS_PER_CHUNK = 2_000_000  # bootstrap draws (replicates x rows) held in memory at once
AGE_BANDS = ("<30", "30-44", "45-59", "60-74", "75+", "unknown")
AGE_EDGES = (30, 45, 60, 75)  # lower edges of bands 2..5
AGE_MAX = 130  # ages above this (or negative) are data errors -> "unknown"
ONE_CLASS_WARNING = (
    "y_true contains only one class ({cls}); roc_auc, pr_auc, sensitivity_at_90_specificity, "
    "specificity_at_90_sensitivity and the AUC confidence interval need both classes and are None"
)

ArrayLike = Any  # list, numpy array or pandas Series


# --- scikit-learn, imported on first use ---------------------------------------------------------------------


def sklearn_metrics() -> Any:
    """``sklearn.metrics``, imported on first use: a scoring actor applies an operating point and computes no
    metric, and importing scikit-learn (with scipy.stats) cost each actor about 1 s of CPU before its first
    batch (bench/RESULTS.md, time to the first row)."""
    import sklearn.metrics

    return sklearn.metrics


# --- validation and conversion ---------------------------------------------------------------------------------


def _vector(values: ArrayLike, name: str, expected: str, shape_hint: str = "") -> np.ndarray:
    """A non-empty 1-D float64 array, or ValueError naming ``name`` and what it should hold."""
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be {expected}: {e}") from None
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D{shape_hint}, got shape {v.shape}")
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    return v


def as_prob(prob: ArrayLike, name: str = "prob") -> np.ndarray:
    """1-D float64 probabilities; raise on NaN/inf, out-of-range values or a non-1-D shape."""
    p = _vector(prob, name, "numeric probabilities", " (one P(malignant) per case)")
    bad = ~np.isfinite(p)
    if bad.any():
        raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf value(s), first at index {int(np.argmax(bad))}")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got min={p.min():.6g}, max={p.max():.6g}")
    return p


def as_labels(y_true: ArrayLike) -> np.ndarray:
    """1-D int64 labels in {0, 1}; raise on anything else (NaN, 2, 'malignant', ...)."""
    y = _vector(y_true, "y_true", "0/1 labels")
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ValueError(
            f"y_true must contain only 0 (benign) and 1 (malignant); found {np.unique(y[bad])[:5].tolist()}"
        )
    return y.astype(np.int64)


def validate(y_true: ArrayLike, prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y, p = as_labels(y_true), as_prob(prob)
    if len(y) != len(p):
        raise ValueError(f"length mismatch: y_true has {len(y)} rows, prob has {len(p)}")
    return y, p


def check_threshold(threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if not (0.0 <= t <= 1.0):
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    return t


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


def two_classes(y: np.ndarray) -> bool:
    return bool(y.min() != y.max())


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


# --- bootstrap -------------------------------------------------------------------------------------------------


def _auc_of_resamples(y: np.ndarray, score_rank: np.ndarray, n_ranks: int, idx: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``idx`` (a resample of case indices), NaN where a resample has one class.

    Vectorised Mann-Whitney U over tied-score groups: AUC = P(s+ > s-) + 0.5 P(s+ = s-), the same quantity
    roc_auc_score computes (the tests check equality). ``score_rank`` is the dense rank of each score.
    """
    b = idx.shape[0]
    key = (score_rank[idx] * 2 + y[idx]) + (np.arange(b, dtype=np.int64)[:, None] * (2 * n_ranks))
    counts = np.bincount(key.ravel(), minlength=b * 2 * n_ranks).reshape(b, n_ranks, 2).astype(np.float64)
    neg, pos = counts[..., 0], counts[..., 1]
    neg_below = np.cumsum(neg, axis=1) - neg
    u = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def bootstrap_auc_ci(
    y_true: ArrayLike, prob: ArrayLike, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile-bootstrap (1 - alpha) CI for ROC AUC; resamples containing one class are skipped.

    Raises ValueError if y_true has a single class (no AUC to bound). Deterministic for a given seed.
    """
    y, p = validate(y_true, prob)
    if not two_classes(y):
        raise ValueError("bootstrap_auc_ci needs both classes in y_true")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    n_boot, n = int(n_boot), len(y)
    uniq, rank = np.unique(p, return_inverse=True)
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOT_CELLS_PER_CHUNK // n)
    aucs = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        aucs.append(_auc_of_resamples(y, rank.astype(np.int64), len(uniq), idx))
    a = np.concatenate(aucs)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError("every bootstrap resample had a single class; too few cases for a CI")
    lo, hi = np.quantile(a, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def paired_auc_gain(y_true: ArrayLike, score_new: ArrayLike, score_ref: ArrayLike, n_boot: int = 1000,
                    seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """ROC AUC of ``score_new`` minus ``score_ref`` on the same cases, with a paired percentile-bootstrap interval.

    Why paired: two models scored on one validation split share its luck; resampling the cases once for both
    cancels it, so the interval is far narrower than the difference of two separate intervals. Scores may be
    logits (any real numbers): AUC only ranks them.
    """
    sk = sklearn_metrics()
    y = as_labels(y_true)
    new, ref = (_vector(s, name, "numeric scores") for s, name in ((score_new, "score_new"), (score_ref, "score_ref")))
    if not (len(y) == len(new) == len(ref)):
        raise ValueError(f"length mismatch: {len(y)} labels, {len(new)} and {len(ref)} scores")
    if not (np.isfinite(new).all() and np.isfinite(ref).all()):
        raise ValueError("scores contain NaN/inf")
    if not two_classes(y):
        raise ValueError("paired_auc_gain needs both classes in y_true")
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOT_CELLS_PER_CHUNK // len(y))
    ranks = [(len(u), r.astype(np.int64)) for u, r in (np.unique(s, return_inverse=True) for s in (new, ref))]
    gains = []
    for start in range(0, int(n_boot), chunk):
        idx = rng.integers(0, len(y), size=(min(chunk, int(n_boot) - start), len(y)))
        a_new, a_ref = (_auc_of_resamples(y, rank, n, idx) for n, rank in ranks)
        gains.append(a_new - a_ref)
    g = np.concatenate(gains)
    g = g[np.isfinite(g)]
    lo, hi = np.quantile(g, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(sk.roc_auc_score(y, new) - sk.roc_auc_score(y, ref)), float(lo), float(hi)


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


def proportion_ci(k: int, n: int, level: float = 0.95) -> list[float] | None:
    """Exact (Clopper-Pearson) two-sided interval of a proportion k/n, or None without cases.

    Why exact: per-diagnosis groups are small (about 90 melanomas in HAM10000's validation split), where the
    normal approximation's interval is too narrow and can leave [0, 1].
    """
    if n <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return [float(ci.low), float(ci.high)]


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
