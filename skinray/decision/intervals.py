"""How sure a figure is: bootstrap intervals for ROC AUC (alone, and as a paired gain between two models) and exact
intervals for proportions.

Why a module of its own: the intervals are the costly, subtle part of reporting a metric (a vectorised resampler
that must agree with scikit-learn, exact binomial bounds for small groups), and the metrics, the promises and the
benchmarks all lean on the same ones. Inputs follow :mod:`skinray.decision.inputs`.
"""

from __future__ import annotations

import numpy as np

from skinray.decision.inputs import ArrayLike, as_labels, as_vector, sklearn_metrics, two_classes, validate

BOOT_CELLS_PER_CHUNK = 2_000_000  # bootstrap draws (replicates x rows) held in memory at once


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
    new, ref = (as_vector(s, name, "numeric scores")
                for s, name in ((score_new, "score_new"), (score_ref, "score_ref")))
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
