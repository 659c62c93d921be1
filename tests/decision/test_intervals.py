"""skinray.decision.intervals: the vectorised bootstrap checked against sklearn, exact intervals against scipy."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from skinray.decision import intervals

from conftest import noisy_scores

# --- bootstrap -------------------------------------------------------------------------------------------------


def test_vectorised_resample_auc_equals_sklearn() -> None:
    y, p = noisy_scores(n=300, seed=3)
    p = np.round(p, 2)  # plenty of ties
    uniq, rank = np.unique(p, return_inverse=True)
    idx = np.random.default_rng(0).integers(0, len(y), size=(25, len(y)))
    got = intervals._auc_of_resamples(y, rank.astype(np.int64), len(uniq), idx)
    want = [roc_auc_score(y[i], p[i]) for i in idx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_bootstrap_ci_contains_auc_and_narrows() -> None:
    y_small, p_small = noisy_scores(n=200, seed=4)
    y_big, p_big = noisy_scores(n=2000, seed=4)
    lo_s, hi_s = intervals.bootstrap_auc_ci(y_small, p_small, n_boot=500, seed=0)
    t0 = time.perf_counter()
    lo_b, hi_b = intervals.bootstrap_auc_ci(y_big, p_big, n_boot=1000, seed=0)
    assert time.perf_counter() - t0 < 2.0
    assert lo_s <= roc_auc_score(y_small, p_small) <= hi_s
    assert lo_b <= roc_auc_score(y_big, p_big) <= hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s)
    assert intervals.bootstrap_auc_ci(y_big, p_big, n_boot=200, seed=7) == intervals.bootstrap_auc_ci(y_big, p_big, n_boot=200, seed=7)


def test_bootstrap_skips_single_class_resamples() -> None:
    lo, hi = intervals.bootstrap_auc_ci([0, 1, 0], [0.2, 0.8, 0.4], n_boot=300)  # many resamples lack the positive
    assert lo == hi == 1.0
    with pytest.raises(ValueError, match="both classes"):
        intervals.bootstrap_auc_ci([1, 1], [0.2, 0.3])


def test_proportion_ci_is_clopper_pearson() -> None:
    from scipy.stats import beta

    low, high = intervals.proportion_ci(70, 90)
    assert low == pytest.approx(beta.ppf(0.025, 70, 21)) and high == pytest.approx(beta.ppf(0.975, 71, 20))
    assert intervals.proportion_ci(0, 12)[0] == 0.0 and intervals.proportion_ci(12, 12)[1] == 1.0
    assert intervals.proportion_ci(0, 0) is None
    assert intervals.proportion_ci(9, 10, level=0.99)[0] < intervals.proportion_ci(9, 10)[0]


def test_paired_auc_gain_matches_a_plain_loop_and_is_narrower_than_unpaired() -> None:
    y, p = noisy_scores(n=300, seed=12)
    rng = np.random.default_rng(1)
    q = np.clip(p, 1e-6, 1 - 1e-6)
    ref = np.log(q / (1 - q))
    new = ref + rng.normal(0, 0.3, len(y)) + 0.4 * (y - 0.5)  # a little better, strongly correlated with ref
    gain, lo, hi = intervals.paired_auc_gain(y, new, ref, n_boot=400, seed=5)
    assert gain == pytest.approx(roc_auc_score(y, new) - roc_auc_score(y, ref))
    loop = []
    idx_rng = np.random.default_rng(5)  # the same resamples, one at a time
    for _ in range(400):
        i = idx_rng.integers(0, len(y), len(y))
        loop.append(roc_auc_score(y[i], new[i]) - roc_auc_score(y[i], ref[i]))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])), abs=1e-12)
    a_lo, a_hi = intervals.bootstrap_auc_ci(y, 1 / (1 + np.exp(-new)), n_boot=400)
    assert hi - lo < a_hi - a_lo  # pairing cancels the shared luck of the split
    with pytest.raises(ValueError):
        intervals.paired_auc_gain(y, new[:-1], ref)
    with pytest.raises(ValueError):
        intervals.paired_auc_gain(np.zeros(len(y)), new, ref)
