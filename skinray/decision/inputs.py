"""What every number in skinray.decision takes in, checked one way: labels, probabilities, thresholds.

Why a module of its own: the metrics, their intervals, the operating point, the promises and the plots all read the
same two columns, and a probability of 1.2 or a label of 2 must fail the same way wherever it enters.

Conventions (shared by every function that takes these inputs):

* label 1 = malignant (the positive class), 0 = benign; ``prob`` is P(malignant) in [0, 1];
* a case is predicted malignant when ``prob >= threshold`` (the same rule ``roc_curve`` thresholds follow);
* bad inputs (length mismatch, NaN or out-of-range probabilities, labels other than 0/1) raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ArrayLike = Any  # list, numpy array or pandas Series


def sklearn_metrics() -> Any:
    """``sklearn.metrics``, imported on first use: a scoring actor applies an operating point and computes no
    metric, and importing scikit-learn (with scipy.stats) cost each actor about 1 s of CPU before its first
    batch (bench/RESULTS.md, time to the first row)."""
    import sklearn.metrics

    return sklearn.metrics


def as_vector(values: ArrayLike, name: str, expected: str, shape_hint: str = "") -> np.ndarray:
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
    p = as_vector(prob, name, "numeric probabilities", " (one P(malignant) per case)")
    bad = ~np.isfinite(p)
    if bad.any():
        raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf value(s), first at index {int(np.argmax(bad))}")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got min={p.min():.6g}, max={p.max():.6g}")
    return p


def as_labels(y_true: ArrayLike) -> np.ndarray:
    """1-D int64 labels in {0, 1}; raise on anything else (NaN, 2, 'malignant', ...)."""
    y = as_vector(y_true, "y_true", "0/1 labels")
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


def two_classes(y: np.ndarray) -> bool:
    return bool(y.min() != y.max())
