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
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure
    from PIL import Image

# --- constants -------------------------------------------------------------------------------------------------

POS_LABEL = 1  # malignant
CLASS_NAMES = ("benign", "malignant")
DEFAULT_THRESHOLD = 0.5
ECE_BINS = 10  # equal-width bins on [0, 1], binned exactly like sklearn.calibration.calibration_curve("uniform")
SPEC_TARGET = 0.90  # sensitivity_at_90_specificity: max TPR with FPR <= 1 - SPEC_TARGET
SENS_TARGET = 0.90  # specificity_at_90_sensitivity: max TNR with TPR >= SENS_TARGET
ROC_TOL = 1e-12  # float slack when comparing rates read off roc_curve against targets
THRESHOLD_CLIP = (1e-6, 1.0 - 1e-6)  # chosen thresholds live strictly inside (0, 1); roc_curve's first is +inf
PROB_CLIP = (1e-7, 1.0 - 1e-7)  # before taking logits for temperature scaling
TEMPERATURE_BOUNDS = (0.05, 20.0)
BOOT_CELLS_PER_CHUNK = 2_000_000  # bootstrap draws (replicates x rows) held in memory at once
AGE_BANDS = ("<30", "30-44", "45-59", "60-74", "75+", "unknown")
AGE_EDGES = (30, 45, 60, 75)  # lower edges of bands 2..5
AGE_MAX = 130  # ages above this (or negative) are data errors -> "unknown"
THRESHOLD_POLICIES = ("youden", "sensitivity", "fixed")
DPI = 110
ONE_CLASS_WARNING = (
    "y_true contains only one class ({cls}); roc_auc, pr_auc, sensitivity_at_90_specificity, "
    "specificity_at_90_sensitivity and the AUC confidence interval need both classes and are None"
)

ArrayLike = Any  # list, numpy array or pandas Series


# --- validation and conversion ---------------------------------------------------------------------------------


def _as_prob(prob: ArrayLike, name: str = "prob") -> np.ndarray:
    """1-D float64 probabilities; raise on NaN/inf, out-of-range values or a non-1-D shape."""
    try:
        p = np.asarray(prob, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric probabilities: {e}") from None
    if p.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one P(malignant) per case), got shape {p.shape}")
    if p.size == 0:
        raise ValueError(f"{name} is empty")
    bad = ~np.isfinite(p)
    if bad.any():
        raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf value(s), first at index {int(np.argmax(bad))}")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got min={p.min():.6g}, max={p.max():.6g}")
    return p


def _as_labels(y_true: ArrayLike) -> np.ndarray:
    """1-D int64 labels in {0, 1}; raise on anything else (NaN, 2, 'malignant', ...)."""
    try:
        y = np.asarray(y_true, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"y_true must be 0/1 labels: {e}") from None
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y_true is empty")
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ValueError(
            f"y_true must contain only 0 (benign) and 1 (malignant); found {np.unique(y[bad])[:5].tolist()}"
        )
    return y.astype(np.int64)


def _validate(y_true: ArrayLike, prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y, p = _as_labels(y_true), _as_prob(prob)
    if len(y) != len(p):
        raise ValueError(f"length mismatch: y_true has {len(y)} rows, prob has {len(p)}")
    return y, p


def _check_threshold(threshold: float) -> float:
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


def _two_classes(y: np.ndarray) -> bool:
    return bool(y.min() != y.max())


# --- threshold metrics -----------------------------------------------------------------------------------------


def threshold_metrics(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> dict:
    """Confusion-matrix metrics at one operating point (predict malignant when prob >= threshold).

    Undefined ratios (e.g. recall with no positives) are None rather than 0, so they are not mistaken for
    a bad model.
    """
    y, p = _validate(y_true, prob)
    t = _check_threshold(threshold)
    pred = (p >= t).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    nan = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined cases are reported as None below
        sens = recall_score(y, pred, pos_label=1, zero_division=nan)
        spec = recall_score(y, pred, pos_label=0, zero_division=nan)
        out = {
            "threshold": t,
            "n": int(len(y)),
            "accuracy": accuracy_score(y, pred),
            "precision": precision_score(y, pred, pos_label=1, zero_division=nan),
            "recall": sens,
            "sensitivity": sens,
            "specificity": spec,
            "npv": precision_score(y, pred, pos_label=0, zero_division=nan),
            "f1": f1_score(y, pred, pos_label=1, zero_division=nan),
            # needs both classes: with one class sklearn would silently return the single recall
            "balanced_accuracy": balanced_accuracy_score(y, pred) if _two_classes(y) else None,
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
    y, p = _validate(y_true, prob)
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    ids = _bin_ids(p, int(n_bins))
    sum_y = np.bincount(ids, weights=y.astype(np.float64), minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / len(y))


def _sens_at_spec(y: np.ndarray, p: np.ndarray, spec_target: float = SPEC_TARGET) -> float:
    fpr, tpr, _ = roc_curve(y, p, pos_label=1, drop_intermediate=False)
    return float(tpr[fpr <= 1.0 - spec_target + ROC_TOL].max())  # (0, 0) is always on the curve


def _spec_at_sens(y: np.ndarray, p: np.ndarray, sens_target: float = SENS_TARGET) -> float:
    fpr, tpr, _ = roc_curve(y, p, pos_label=1, drop_intermediate=False)
    return float((1.0 - fpr[tpr >= sens_target - ROC_TOL]).max())  # (1, 1) is always on the curve


def ranking_metrics(y_true: ArrayLike, prob: ArrayLike) -> dict:
    """Threshold-free metrics: discrimination (ROC/PR AUC, sens@spec), calibration (Brier, ECE, log loss).

    With a single class the metrics that need both classes are None (see full_report for the warning).
    """
    y, p = _validate(y_true, prob)
    both = _two_classes(y)
    n_pos = int(y.sum())
    out = {
        "n": int(len(y)),
        "n_pos": n_pos,
        "prevalence": n_pos / len(y),
        "roc_auc": roc_auc_score(y, p) if both else None,
        "pr_auc": average_precision_score(y, p, pos_label=1) if both else None,
        "brier": brier_score_loss(y, p, pos_label=1),
        "log_loss": log_loss(y, p, labels=[0, 1]),
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
    y, p = _validate(y_true, prob)
    if not _two_classes(y):
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


# --- reports ---------------------------------------------------------------------------------------------------


def full_report(y_true: ArrayLike, prob: ArrayLike, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict:
    """Everything evaluation and batch scoring publish, as one JSON-ready dict. Never raises on a single class."""
    y, p = _validate(y_true, prob)
    t = _check_threshold(threshold)
    warn: list[str] = []
    ci: list[float] | None = None
    if _two_classes(y):
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
    """Per-subgroup n, n_pos, ROC AUC (None below min_n or with one class), sensitivity and specificity.

    Missing group values form their own group with ``group: None``. Age bands come out in age order.
    """
    missing = [c for c in (by, label_col, prob_col) if c not in df.columns]
    if missing:
        raise ValueError(f"grouped_report: column(s) {missing} not in DataFrame (has {list(df.columns)})")
    t = _check_threshold(threshold)
    if len(df) == 0:
        return []
    y_all, p_all = _validate(df[label_col].to_numpy(), df[prob_col].to_numpy())
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
        auc = roc_auc_score(y, p) if (len(y) >= min_n and _two_classes(y)) else None
        rows.append(
            {
                "group": g,
                "n": int(len(y)),
                "n_pos": int(y.sum()),
                "roc_auc": _py(auc),
                "sensitivity": tm["sensitivity"],
                "specificity": tm["specificity"],
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


# --- thresholds and calibration --------------------------------------------------------------------------------


def sensitivity_lower_bound(tp: ArrayLike, n_pos: int, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound on sensitivity from ``tp`` of ``n_pos`` positives caught.

    Why: a validation split holds few malignant lesions (157 in HAM10000's), so a threshold tuned to exactly 0.90
    validation sensitivity lands near 0.85 on new data about half the time; the bound makes the promise hold.
    """
    from scipy.stats import beta

    k = np.asarray(tp, dtype=float)
    with np.errstate(invalid="ignore"):
        lb = beta.ppf(1.0 - confidence, k, n_pos - k + 1)
    return np.where(k > 0, np.nan_to_num(lb, nan=0.0), 0.0)


def choose_threshold(
    y_true: ArrayLike, prob: ArrayLike, policy: str = "youden", target_sensitivity: float | None = None,
    confidence: float | None = None,
) -> dict:
    """Pick an operating threshold on validation data and report the sensitivity/specificity it gives there.

    youden: maximise TPR - FPR; sensitivity: the highest threshold with TPR >= target_sensitivity, or with
    ``confidence``, the highest whose lower confidence bound on sensitivity reaches the target (a promise about new
    data, not about the validation split); fixed: 0.5. Thresholds are clipped into (0, 1) and measured after
    clipping, so the numbers are honest.
    """
    y, p = _validate(y_true, prob)
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"policy must be one of {THRESHOLD_POLICIES}, got {policy!r}")
    if policy == "sensitivity":
        if target_sensitivity is None or not (0.0 < float(target_sensitivity) <= 1.0):
            raise ValueError(f"policy 'sensitivity' needs target_sensitivity in (0, 1], got {target_sensitivity!r}")
    if confidence is not None and not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    n_pos = int(y.sum())
    if policy == "fixed":
        t = DEFAULT_THRESHOLD
    else:
        if not _two_classes(y):
            raise ValueError(f"choose_threshold(policy={policy!r}) needs both classes in y_true")
        fpr, tpr, thr = roc_curve(y, p, pos_label=1, drop_intermediate=False)
        if policy == "youden":
            i = int(np.argmax(tpr - fpr))  # first maximum = highest threshold among ties
        elif confidence is None:
            i = int(np.argmax(tpr >= float(target_sensitivity) - ROC_TOL))  # tpr is non-decreasing; last is 1
        else:
            lb = sensitivity_lower_bound(np.rint(tpr * n_pos), n_pos, float(confidence))
            ok = lb >= float(target_sensitivity) - ROC_TOL
            i = int(np.argmax(ok)) if ok.any() else len(thr) - 1  # unreachable target: catch every positive
        t = float(np.clip(thr[i], *THRESHOLD_CLIP))
    tm = threshold_metrics(y, p, t)
    out = {
        "threshold": t,
        "policy": policy,
        "target_sensitivity": None if target_sensitivity is None else float(target_sensitivity),
        "sensitivity": tm["sensitivity"],
        "specificity": tm["specificity"],
    }
    if confidence is not None and policy == "sensitivity":
        bound = float(sensitivity_lower_bound(round(tm["sensitivity"] * n_pos), n_pos, float(confidence)))
        out.update(confidence=float(confidence), sensitivity_lower_bound=bound,
                   target_met=bool(bound >= float(target_sensitivity) - ROC_TOL))
    return out


def _logits(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, *PROB_CLIP))


def fit_temperature(y_true: ArrayLike, prob: ArrayLike) -> float:
    """Temperature T minimising NLL of sigmoid(logit(p) / T); T > 1 softens over-confident scores."""
    y, p = _validate(y_true, prob)
    if not _two_classes(y):
        raise ValueError("fit_temperature needs both classes in y_true (otherwise T runs to a bound)")
    z = _logits(p)
    yf = y.astype(np.float64)

    def nll(t: float) -> float:  # mean binary cross-entropy, numerically stable form of log_loss
        s = z / t
        return float(np.mean(np.logaddexp(0.0, s) - yf * s))

    res = minimize_scalar(nll, bounds=TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(res.x)


def fit_platt(y_true: ArrayLike, prob: ArrayLike) -> tuple[float, float]:
    """Temperature T and bias b for sigmoid(logit(p) / T + b), by unregularised logistic regression on the logit.

    The bias is what temperature alone cannot fix: training with class weights shifts every logit by about
    log(w_malignant / w_benign), so a class-weighted model's raw scores overstate malignancy at every level.
    """
    from sklearn.linear_model import LogisticRegression

    y, p = _validate(y_true, prob)
    if not _two_classes(y):
        raise ValueError("fit_platt needs both classes in y_true")
    z = _logits(p).reshape(-1, 1)
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(z, y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not (a > 1.0 / TEMPERATURE_BOUNDS[1]):  # scores anti- or un-correlated with the label: keep the ranking
        return fit_temperature(y, p), 0.0
    return float(min(1.0 / a, TEMPERATURE_BOUNDS[1])), b


def apply_temperature(prob: ArrayLike, temperature: float, bias: float = 0.0) -> np.ndarray:
    """sigmoid(logit(p) / T + bias): the fitted calibration; float32 out, same shape as ``prob``."""
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim == 0:
        raise ValueError("prob must be an array, got a scalar")
    _as_prob(p.ravel())
    return expit(_logits(p) / t + float(bias)).astype(np.float32)


# --- plots -----------------------------------------------------------------------------------------------------


def _figure(figsize: tuple[float, float], **kwargs: Any) -> "Figure":
    """A Figure bound to the Agg canvas directly: no pyplot, no global figure registry, nothing to leak."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: "Figure", path: str | os.PathLike[str]) -> str:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=DPI, format="png", facecolor="white")
    finally:
        fig.clear()
    return str(out)


def _one_class_note(ax: Any, y: np.ndarray, what: str) -> None:
    ax.text(0.5, 0.5, f"{what} undefined:\nonly class {int(y[0])} ({CLASS_NAMES[int(y[0])]}) present",
            ha="center", va="center", fontsize=11, transform=ax.transAxes)


def plot_roc(
    y_true: ArrayLike, prob: ArrayLike, path: str | os.PathLike[str], threshold: float | None = None,
    title: str = "ROC",
) -> str:
    """ROC curve with AUC in the legend and, if given, the operating point at ``threshold``."""
    y, p = _validate(y_true, prob)
    fig = _figure((5.2, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if _two_classes(y):
        fpr, tpr, _ = roc_curve(y, p, pos_label=1)
        ax.plot(fpr, tpr, color="C0", lw=2, label=f"model (AUC = {roc_auc_score(y, p):.3f})")
        if threshold is not None:
            tm = threshold_metrics(y, p, threshold)
            x, yy = 1.0 - tm["specificity"], tm["sensitivity"]
            ax.plot([x], [yy], "o", color="C3", ms=8,
                    label=f"t = {tm['threshold']:.3f}: sens {yy:.2f}, spec {tm['specificity']:.2f}")
    else:
        _one_class_note(ax, y, "ROC")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)")
    ax.set_title(f"{title} (n={len(y)}, malignant={int(y.sum())})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)


def plot_pr(y_true: ArrayLike, prob: ArrayLike, path: str | os.PathLike[str], title: str = "Precision-recall") -> str:
    """Precision-recall curve (step, as sklearn draws it) with average precision and the prevalence baseline."""
    y, p = _validate(y_true, prob)
    fig = _figure((5.2, 5.0))
    ax = fig.add_subplot()
    prevalence = float(y.mean())
    if _two_classes(y):
        precision, recall, _ = precision_recall_curve(y, p, pos_label=1)
        ap = average_precision_score(y, p, pos_label=1)
        ax.plot(recall, precision, drawstyle="steps-post", color="C0", lw=2, label=f"model (AP = {ap:.3f})")
    else:
        _one_class_note(ax, y, "Precision-recall")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence = {prevalence:.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)")
    ax.set_title(f"{title} (n={len(y)}, malignant={int(y.sum())})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    return _save(fig, path)


def plot_confusion(
    y_true: ArrayLike, prob: ArrayLike, threshold: float, path: str | os.PathLike[str],
    labels: Sequence[str] = CLASS_NAMES,
) -> str:
    """2x2 confusion matrix at ``threshold``: counts plus percentage of each true-class row."""
    y, p = _validate(y_true, prob)
    t = _check_threshold(threshold)
    if len(labels) != 2:
        raise ValueError(f"labels must name the 2 classes, got {labels!r}")
    cm = confusion_matrix(y, (p >= t).astype(np.int64), labels=[0, 1])
    row = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(row > 0, cm / np.maximum(row, 1), np.nan)
    fig = _figure((4.8, 4.3))
    ax = fig.add_subplot()
    ax.imshow(np.nan_to_num(frac), cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            pct = "–" if np.isnan(frac[i, j]) else f"{100 * frac[i, j]:.1f}%"
            dark = not np.isnan(frac[i, j]) and frac[i, j] > 0.5
            ax.text(j, i, f"{cm[i, j]}\n{pct}", ha="center", va="center", fontsize=13,
                    color="white" if dark else "black")
    ax.set_xticks([0, 1], labels=list(labels))
    ax.set_yticks([0, 1], labels=list(labels))
    ax.set(xlabel="Predicted", ylabel="True")
    ax.set_title(f"Confusion matrix at threshold {t:.3f}\n(n={len(y)}; % of true-class row)", fontsize=11)
    return _save(fig, path)


def plot_calibration(
    y_true: ArrayLike, prob: ArrayLike, path: str | os.PathLike[str], n_bins: int = ECE_BINS
) -> str:
    """Reliability diagram (sklearn calibration_curve, uniform bins) over a histogram of predictions; ECE in title."""
    y, p = _validate(y_true, prob)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform", pos_label=1)
    ece = expected_calibration_error(y, p, n_bins)
    fig = _figure((5.2, 6.0))
    ax, hax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(prob_pred, prob_true, "o-", color="C0", lw=2, label="model")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), ylabel="Observed fraction malignant")
    ax.set_title(f"Calibration (ECE = {ece:.3f}, {n_bins} bins, n={len(y)})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    hax.hist(p, bins=np.linspace(0.0, 1.0, n_bins + 1), color="C0", alpha=0.7, edgecolor="white")
    hax.set(xlabel="Predicted P(malignant)", ylabel="Count")
    hax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_histogram(
    prob: ArrayLike, path: str | os.PathLike[str], threshold: float | None = None, y_true: ArrayLike | None = None
) -> str:
    """Histogram of predicted P(malignant), stacked by true class when labels are given; threshold as a line."""
    if y_true is None:
        p, y = _as_prob(prob), None
    else:
        y, p = _validate(y_true, prob)
    bins = np.linspace(0.0, 1.0, 21)
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot()
    if y is None:
        ax.hist(p, bins=bins, color="C0", edgecolor="white", label=f"all (n={len(p)})")
    else:
        parts = [p[y == 0], p[y == 1]]
        ax.hist(parts, bins=bins, stacked=True, color=["C0", "C3"], edgecolor="white",
                label=[f"{CLASS_NAMES[0]} (n={len(parts[0])})", f"{CLASS_NAMES[1]} (n={len(parts[1])})"])
    if threshold is not None:
        t = _check_threshold(threshold)
        ax.axvline(t, color="black", ls="--", lw=1.5, label=f"threshold = {t:.3f}")
    ax.set(xlim=(0, 1), xlabel="Predicted P(malignant)", ylabel="Count")
    ax.set_title("Score distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path)


# --- contact sheet ---------------------------------------------------------------------------------------------

SHEET_PAD = 8  # px between cells
SHEET_BORDER = 4  # px, red highlight border
SHEET_FONT_PX = 12
SHEET_CAPTION_LINES = 2


def _to_pil(img: Any, i: int) -> "Image.Image":
    from PIL import Image

    if isinstance(img, Image.Image):
        return img.convert("RGB")
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise ValueError(f"images[{i}] must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def _font() -> Any:
    from PIL import ImageFont

    try:  # matplotlib ships DejaVu Sans, so this works without system fonts
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), SHEET_FONT_PX)
    except Exception:  # pragma: no cover - fallback bitmap font
        return ImageFont.load_default()


def _fit_text(draw: Any, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(
    images: list[Any], captions: list[str], path: str | os.PathLike[str], cols: int = 6, thumb: int = 160,
    highlight: list[bool] | None = None,
) -> str:
    """Grid of thumbnails (aspect kept) with up to 2 caption lines each; red border where highlight is True.

    For eyeballing errors: e.g. captions "SYN_0001\\n0.87 malignant", highlight = misclassified.
    """
    from PIL import Image, ImageDraw

    n = len(images)
    if n == 0:
        raise ValueError("contact_sheet needs at least one image")
    if len(captions) != n:
        raise ValueError(f"length mismatch: {n} images but {len(captions)} captions")
    if highlight is not None and len(highlight) != n:
        raise ValueError(f"length mismatch: {n} images but {len(highlight)} highlight flags")
    if int(cols) < 1 or int(thumb) < 16:
        raise ValueError(f"cols must be >= 1 and thumb >= 16, got cols={cols}, thumb={thumb}")
    cols, thumb = min(int(cols), n), int(thumb)
    rows = -(-n // cols)
    font = _font()
    line_h = SHEET_FONT_PX + 4
    cell_w, cell_h = thumb + SHEET_PAD, thumb + SHEET_CAPTION_LINES * line_h + SHEET_PAD + 2
    sheet = Image.new("RGB", (cols * cell_w + SHEET_PAD, rows * cell_h + SHEET_PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, cap) in enumerate(zip(images, captions)):
        x0 = SHEET_PAD + (i % cols) * cell_w
        y0 = SHEET_PAD + (i // cols) * cell_h
        im = _to_pil(img, i)
        im.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        sheet.paste(im, (x0 + (thumb - im.width) // 2, y0 + (thumb - im.height) // 2))
        if highlight is not None and highlight[i]:
            draw.rectangle([x0 - 2, y0 - 2, x0 + thumb + 1, y0 + thumb + 1], outline=(220, 0, 0), width=SHEET_BORDER)
        lines = str(cap).splitlines()[:SHEET_CAPTION_LINES]
        for k, line in enumerate(lines):
            draw.text((x0, y0 + thumb + 3 + k * line_h), _fit_text(draw, line, font, thumb), fill="black", font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return str(out)


__all__ = [
    "AGE_BANDS",
    "age_band",
    "apply_temperature",
    "bootstrap_auc_ci",
    "choose_threshold",
    "sensitivity_lower_bound",
    "contact_sheet",
    "expected_calibration_error",
    "fit_temperature",
    "full_report",
    "grouped_report",
    "plot_calibration",
    "plot_confusion",
    "plot_pr",
    "plot_roc",
    "plot_score_histogram",
    "ranking_metrics",
    "threshold_metrics",
]
