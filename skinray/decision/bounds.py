"""Promises about sensitivity on data not yet seen: lower bounds on it, and the highest thresholds that keep them.

Over images, an exact one-sided binomial bound (:func:`sensitivity_lower_bound`); over trained networks, a
random-effects prediction bound from the folds of a cross-validation (:func:`spread_bound`). Why a module of its own:
this is arithmetic on counts (positives caught, per fold), checked bound by bound against scipy and hand-worked
cases; the threshold policy that searches with it (:mod:`skinray.decision.operating_point`) keeps the records it
fills in and the words that describe them.
"""

from __future__ import annotations

import numpy as np

from skinray.decision.inputs import ArrayLike
from skinray.decision.metrics import ROC_TOL


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


def threshold_catching(scores: np.ndarray, target: float, confidence: float | None) -> tuple[float, bool]:
    """The highest threshold whose sensitivity over ``scores`` (positives only) reaches ``target``, or whose
    one-sided lower bound does with ``confidence``; (threshold, reachable). Unreachable: catch every positive.

    Catching the k highest scores needs threshold = the k-th highest score (``prob >= threshold`` decides).
    """
    desc = np.sort(scores)[::-1]
    caught = np.arange(1, len(desc) + 1)
    if confidence is None:
        ok = caught / len(desc) >= float(target) - ROC_TOL
    else:
        ok = sensitivity_lower_bound(caught, len(desc), float(confidence)) >= float(target) - ROC_TOL
    k = int(np.argmax(ok)) if ok.any() else len(desc) - 1
    return float(desc[k]), bool(ok.any())


def spread_bound(caught: np.ndarray, n: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower bound, between-network SD) on the sensitivity of one more trained network, from K groups (folds, each
    scored by its own network) that caught ``caught`` (K × thresholds) of their ``n`` (K) positives.

    Why: the folds' sensitivities at one threshold spread by the networks' differences as well as by the images (on
    HAM10000 twice the binomial spread), and the final model is one more draw. The between-network variance is the
    folds' variance less their mean binomial variance (a random-effects estimate, floored at 0); the bound is the
    pooled sensitivity less ``z(confidence)`` times √(between · (1 + 1/K) + pooled binomial variance). Folds that
    agree give the pooled images' bound back.
    """
    from scipy.stats import norm

    n = np.asarray(n, dtype=float)
    s = caught / n[:, None]
    pooled = caught.sum(axis=0) / n.sum()
    between = np.maximum(0.0, s.var(axis=0, ddof=1) - (s * (1.0 - s) / n[:, None]).mean(axis=0))
    spread = between * (1.0 + 1.0 / len(n)) + pooled * (1.0 - pooled) / n.sum()
    return pooled - float(norm.ppf(confidence)) * np.sqrt(spread), np.sqrt(between)


def caught_per_group(scores: np.ndarray, groups: np.ndarray, thresholds: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(positives caught per group (rows) at each threshold (columns), positives per group); groups without
    positives left out."""
    caught, n = [], []
    for g in np.unique(groups):
        s = np.sort(scores[groups == g])
        if len(s):
            caught.append(len(s) - np.searchsorted(s, thresholds, side="left"))
            n.append(len(s))
    return np.asarray(caught, dtype=float).reshape(len(n), len(thresholds)), np.asarray(n, dtype=float)


def threshold_across_groups(scores: np.ndarray, groups: np.ndarray, target: float, confidence: float
                             ) -> float | None:
    """The highest threshold at and below which :func:`spread_bound` reaches ``target`` (the bound need not fall
    monotonically, so a lucky peak above a gap does not count); None with fewer than two groups holding positives."""
    desc = np.sort(scores)[::-1]
    caught, n = caught_per_group(scores, groups, desc)
    if len(n) < 2:
        return None
    short = np.flatnonzero(spread_bound(caught, n, confidence)[0] < float(target) - ROC_TOL)
    k = int(short[-1]) + 1 if len(short) else 0
    return float(desc[min(k, len(desc) - 1)])
