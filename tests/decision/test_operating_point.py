"""skinray.decision.operating_point: the threshold policy, the float64 probabilities it gives, its description."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import recall_score

from skinray.decision import operating_point as O
from skinray.decision.bounds import sensitivity_lower_bound
from skinray.decision.calibration import Calibration
from skinray.decision.operating_point import OperatingPoint, ThresholdChoice

from conftest import noisy_scores

# --- thresholds and temperature --------------------------------------------------------------------------------


def test_choose_threshold_youden_separable() -> None:
    neg, pos = np.array([0.1, 0.2, 0.3, 0.35]), np.array([0.6, 0.7, 0.9])
    y, p = np.r_[np.zeros(4, int), np.ones(3, int)], np.r_[neg, pos]
    c = O.choose_threshold(y, p, "youden")
    assert neg.max() < c["threshold"] <= pos.min()
    assert c["sensitivity"] == 1.0 and c["specificity"] == 1.0 and c["policy"] == "youden"


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_choose_threshold_sensitivity_policy(target: float) -> None:
    y, p = noisy_scores(seed=8)
    c = O.choose_threshold(y, p, "sensitivity", target_sensitivity=target)
    assert c["sensitivity"] >= target and 0.0 < c["threshold"] < 1.0
    assert c["sensitivity"] == pytest.approx(recall_score(y, p >= c["threshold"]))
    # highest such threshold: the next score above it loses the target
    higher = p[p > c["threshold"]]
    if higher.size:
        assert recall_score(y, p >= higher.min()) < target


@pytest.mark.parametrize("target, confidence", [(0.8, 0.95), (0.85, 0.9)])
def test_choose_threshold_with_confidence_bound(target: float, confidence: float) -> None:
    from scipy.stats import binomtest

    y, p = noisy_scores(seed=10)
    plain = O.choose_threshold(y, p, "sensitivity", target_sensitivity=target)
    c = O.choose_threshold(y, p, "sensitivity", target_sensitivity=target, confidence=confidence)
    n_pos = int(y.sum())
    tp = int(((p >= c["threshold"]) & (y == 1)).sum())
    # the one-sided bound is the lower end of the exact two-sided interval at level 2c - 1
    exact = binomtest(tp, n_pos).proportion_ci(confidence_level=2 * confidence - 1, method="exact").low
    assert c["sensitivity_lower_bound"] == pytest.approx(exact, abs=1e-9) and c["target_met"]
    assert c["sensitivity_lower_bound"] >= target and c["threshold"] <= plain["threshold"]
    higher = p[p > c["threshold"]]  # the highest such threshold: one score higher breaks the bound
    if higher.size:
        tp_up = int(((p >= higher.min()) & (y == 1)).sum())
        assert sensitivity_lower_bound(tp_up, n_pos, confidence) < target


def test_choose_threshold_unreachable_bound_catches_every_positive() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    c = O.choose_threshold(y, p, "sensitivity", target_sensitivity=0.95, confidence=0.95)  # 3 positives: never
    assert c["sensitivity"] == 1.0 and not c["target_met"] and c["sensitivity_lower_bound"] < 0.95


def _carcinomas_carry_melanomas(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation data where carcinomas score high and melanomas lower: the overall target hides the melanomas."""
    rng = np.random.default_rng(seed)
    dx = np.array(["nv"] * 600 + ["bcc"] * 150 + ["mel"] * 90 + ["vasc"] * 10, dtype=object)
    y = np.isin(dx, ["bcc", "mel"]).astype(int)
    mean = np.select([dx == "bcc", dx == "mel"], [2.5, 0.8], -1.0)
    return y, expit(rng.normal(mean, 1.0)), dx


@pytest.mark.parametrize("policy, confidence", [("sensitivity", 0.95), ("sensitivity", None), ("youden", 0.95)])
def test_diagnosis_target_lowers_the_threshold_until_it_holds(policy: str, confidence: float | None) -> None:
    y, p, dx = _carcinomas_carry_melanomas()
    plain = O.choose_threshold(y, p, policy, 0.7, confidence)
    c = O.choose_threshold(y, p, policy, 0.7, confidence, dx=dx, diagnosis_targets={"mel": 0.8, "akiec": 0.8})
    mel = p[(dx == "mel")]
    caught = int((mel >= c["threshold"]).sum())
    bound = caught / len(mel) if confidence is None else float(sensitivity_lower_bound(caught, len(mel), confidence))
    assert plain["threshold"] > c["threshold"] and c["lowered_for"] == ["mel"]  # the overall target hid them
    assert (mel >= plain["threshold"]).mean() < 0.8
    d = c["diagnoses"]["mel"]
    assert d.n == 90 and d.sensitivity == pytest.approx(caught / 90) and d.met and bound >= 0.8
    if confidence is not None:
        assert d.lower_bound == pytest.approx(bound)
    # the highest such threshold: the next melanoma score above it breaks the promise
    above = np.sort(mel[mel > c["threshold"]])
    if above.size:
        k = int((mel >= above[0]).sum())
        assert (k / 90 if confidence is None else sensitivity_lower_bound(k, 90, confidence)) < 0.8
    assert c["diagnoses"]["akiec"].n == 0 and c["diagnoses"]["akiec"].met is None  # absent: no promise
    assert c["sensitivity"] == pytest.approx(recall_score(y, p >= c["threshold"]))
    choice = ThresholdChoice(**c)
    text = O.describe(choice)
    assert "mel ≥ 0.80: validation sensitivity" in text and "lowered the threshold" in text
    assert "akiec" not in text  # absent beside a present one: recorded in skinray.json, not repeated in words
    only_absent = ThresholdChoice(**O.choose_threshold(y, p, policy, 0.7, confidence, dx=dx,
                                                       diagnosis_targets={"akiec": 0.8}))
    assert "no akiec in the validation split: no per-diagnosis promise" in O.describe(only_absent)
    assert ThresholdChoice.model_validate_json(choice.model_dump_json()) == choice  # stored in skinray.json


def test_diagnosis_target_already_met_changes_nothing() -> None:
    y, p, dx = _carcinomas_carry_melanomas()
    plain = O.choose_threshold(y, p, "sensitivity", 0.7, 0.95)
    c = O.choose_threshold(y, p, "sensitivity", 0.7, 0.95, dx=dx, diagnosis_targets={"bcc": 0.5})
    assert c["threshold"] == plain["threshold"] and c["lowered_for"] == [] and c["diagnoses"]["bcc"].met
    fixed = O.choose_threshold(y, p, "fixed", dx=dx, diagnosis_targets={"mel": 0.8})
    assert fixed["threshold"] == 0.5 and "diagnoses" not in fixed  # a fixed threshold is fixed
    with pytest.raises(ValueError, match="one diagnosis per row"):
        O.choose_threshold(y, p, "youden", diagnosis_targets={"mel": 0.8})


def test_unreachable_diagnosis_target_catches_that_diagnosis() -> None:
    y, p, dx = _carcinomas_carry_melanomas()
    dx = dx.copy()
    dx[np.flatnonzero(dx == "mel")[5:]] = "bkl_as_mel"  # five melanomas left: 0.95 at 95% confidence is impossible
    c = O.choose_threshold(y, p, "sensitivity", 0.7, 0.95, dx=dx, diagnosis_targets={"mel": 0.95})
    assert c["diagnoses"]["mel"].sensitivity == 1.0 and c["diagnoses"]["mel"].met is False
    assert "(not reachable)" in O.describe(ThresholdChoice(**c))


def test_choose_threshold_fixed_and_errors() -> None:
    y, p = noisy_scores(seed=9)
    assert O.choose_threshold(y, p, "fixed")["threshold"] == 0.5
    with pytest.raises(ValueError):
        O.choose_threshold(y, p, "sensitivity")
    with pytest.raises(ValueError):
        O.choose_threshold(y, p, "magic")


def test_choose_threshold_clips_inf() -> None:
    y, p = [1, 0, 1, 0], [0.2, 0.9, 0.1, 0.8]  # inverted scorer: best J is the +inf threshold
    t = O.choose_threshold(y, p, "youden")["threshold"]
    assert 0.0 < t < 1.0


def test_saturated_logits_keep_distinct_probabilities_and_ranking() -> None:
    """A float32 sigmoid is exactly 1.0 above logit ~17; logits calibrated in float64 keep every image distinct."""
    z = np.array([17.5, 20.0, 25.0, 30.0, 35.0], np.float32)
    assert len(set(expit(z).astype(np.float32).tolist())) == 1  # the old output layer: one tie at 1.0
    op = OperatingPoint(Calibration(method="platt", temperature=1.3, bias=-0.4),
                        ThresholdChoice(threshold=0.3, policy="youden"))
    scored = op.apply(z)
    assert len(set(scored.logit.tolist())) == len(z)  # the calibrated logit never ties: the ranking key
    assert np.all(np.diff(scored.logit) > 0) and np.all(np.diff(scored.prob) >= 0)
    assert scored.prob.dtype == np.float64 and len(set(scored.prob[:3].tolist())) == 3
    assert scored.malignant.all() and np.allclose(scored.confidence, scored.prob)


@pytest.mark.parametrize("threshold", [float("nan"), -1.0, 1.5])
def test_threshold_must_lie_in_zero_one(threshold: float) -> None:
    with pytest.raises(ValueError):
        ThresholdChoice(threshold=threshold, policy="fixed")


def test_fit_and_describe() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, 600)
    y = rng.binomial(1, expit(z))
    op, report = O.fit(y, z, "platt", "sensitivity", 0.8, 0.95)
    assert op.calibration.method == "platt" and report["n"] == 600
    assert O.describe(op.threshold).startswith("sensitivity ≥ 0.80 with 95% confidence")
    assert recall_score(y, op.apply(z).malignant) == pytest.approx(op.threshold.sensitivity)
    assert O.describe(ThresholdChoice(threshold=0.5, policy="youden")) == "youden"
    unreachable = ThresholdChoice(**O.choose_threshold(y[:40], expit(z[:40]), "sensitivity", 0.99, confidence=0.95))
    assert "not reachable" in O.describe(unreachable)


def _folds_that_disagree(seed: int = 4, k: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold scores from k networks that differ: each fold's positives are shifted by its own offset, so the
    folds' sensitivities at one threshold spread more than their images alone would make them."""
    rng = np.random.default_rng(seed)
    n = 3000
    folds = np.arange(n) % k
    dx = rng.choice(np.array(["nv", "bcc", "mel"], dtype=object), size=n, p=[0.7, 0.15, 0.15])
    y = (dx != "nv").astype(int)
    offset = np.linspace(-0.9, 0.9, k)[folds]
    return y, expit(rng.normal(np.where(y == 1, 1.5 + offset, -1.0), 1.0)), dx, folds


def test_fold_spread_lowers_the_threshold_until_a_new_network_meets_the_targets() -> None:
    """train.threshold_fold_spread: the chosen threshold is the highest at and below which the bound on a new
    network's sensitivity (pooled, less the between-fold spread beyond the images') reaches the targets, overall
    and for melanoma; the pooled images' bound alone sits higher."""
    from scipy.stats import norm

    y, p, dx, folds = _folds_that_disagree()
    targets = {"mel": 0.8}
    pooled = O.choose_threshold(y, p, "sensitivity", 0.85, 0.95, dx=dx, diagnosis_targets=targets)
    c = O.choose_threshold(y, p, "sensitivity", 0.85, 0.95, dx=dx, diagnosis_targets=targets, groups=folds)
    assert c["threshold"] < pooled["threshold"] and c["fold_spread"].lowered

    def bound(t: float, mask: np.ndarray) -> float:  # written out: pooled − z·√(between·(1 + 1/K) + binomial)
        s = np.array([np.mean(p[mask & (folds == f)] >= t) for f in range(5)])
        n = np.array([np.sum(mask & (folds == f)) for f in range(5)])
        pooled_s = np.mean(p[mask] >= t)
        between = max(0.0, s.var(ddof=1) - np.mean(s * (1 - s) / n))
        return pooled_s - norm.ppf(0.95) * np.sqrt(between * 1.2 + pooled_s * (1 - pooled_s) / mask.sum())

    pos, mel = y == 1, dx == "mel"
    spread = c["fold_spread"]
    assert bound(c["threshold"], pos) >= 0.85 - 1e-9 and bound(c["threshold"], mel) >= 0.8 - 1e-9
    assert spread.prediction_bound == pytest.approx(bound(c["threshold"], pos))
    assert spread.diagnosis_bounds["mel"] == pytest.approx(bound(c["threshold"], mel))
    assert spread.folds == 5 and len(spread.sensitivity) == 5 and spread.between_network_sd > 0.02
    # the highest such threshold: the next positive score above it breaks one of the two bounds
    above = np.sort(p[pos & (p > c["threshold"])])[0]
    assert bound(above, pos) < 0.85 or bound(above, mel) < 0.8
    text = O.describe(ThresholdChoice(**c))
    assert "across 5 folds: sensitivity" in text and "bound for a new network" in text
    assert "(the spread lowered the threshold)" in text
    assert ThresholdChoice.model_validate_json(ThresholdChoice(**c).model_dump_json()) == ThresholdChoice(**c)


def test_folds_that_agree_leave_the_pooled_threshold() -> None:
    """Five networks that score alike (each fold the same images and scores): no spread between networks, and the
    pooled images' exact bound, the stricter one, decides."""
    y1, p1, dx1 = _carcinomas_carry_melanomas()
    y, p, dx = np.tile(y1, 5), np.tile(p1, 5), np.tile(dx1, 5)
    folds = np.repeat(np.arange(5), len(y1))
    pooled = O.choose_threshold(y, p, "sensitivity", 0.7, 0.95, dx=dx, diagnosis_targets={"mel": 0.8})
    c = O.choose_threshold(y, p, "sensitivity", 0.7, 0.95, dx=dx, diagnosis_targets={"mel": 0.8}, groups=folds)
    assert c["threshold"] == pooled["threshold"] and not c["fold_spread"].lowered
    assert c["fold_spread"].between_network_sd == 0.0
    assert "fold_spread" not in O.choose_threshold(y, p, "youden", groups=folds)  # only the promised policy
    with pytest.raises(ValueError, match="at least two groups"):
        O.choose_threshold(y, p, "sensitivity", 0.7, 0.95, groups=np.zeros(len(y)))
