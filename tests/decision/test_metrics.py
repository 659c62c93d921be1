"""skinray.decision.metrics: every number checked against an independent sklearn computation or a hand-worked case."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from skinray.decision import metrics as M

from conftest import noisy_scores

# --- threshold metrics -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_threshold_metrics_match_sklearn(threshold: float) -> None:
    y, p = noisy_scores()
    pred = (p >= threshold).astype(int)
    m = M.threshold_metrics(list(y), pd.Series(p), threshold)  # list and Series inputs accepted
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert m["npv"] == pytest.approx(precision_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["n"] == len(y) and m["threshold"] == threshold
    json.dumps(m, allow_nan=False)
    assert all(type(v) in (int, float, dict) for v in m.values())  # no numpy scalars


def test_threshold_metrics_undefined_is_none() -> None:
    m = M.threshold_metrics([0, 1, 0], [0.1, 0.2, 0.3], 0.9)  # nothing predicted positive
    assert m["precision"] is None and m["sensitivity"] == 0.0 and m["specificity"] == 1.0


# --- ranking metrics -------------------------------------------------------------------------------------------


def test_ranking_metrics_match_sklearn() -> None:
    y, p = noisy_scores(seed=1)
    r = M.ranking_metrics(y, p)
    assert r["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert r["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert r["brier"] == pytest.approx(brier_score_loss(y, p))
    assert r["log_loss"] == pytest.approx(log_loss(y, p))
    assert r["ece"] == pytest.approx(M.expected_calibration_error(y, p, 10))
    assert (r["n"], r["n_pos"], r["prevalence"]) == (len(y), int(y.sum()), pytest.approx(y.mean()))
    assert 0.0 <= r["sensitivity_at_90_specificity"] <= 1.0
    json.dumps(r, allow_nan=False)


def test_ece_hand_case() -> None:
    # bin [0, 0.1]: p=0.05 x4, y=(0,0,0,1) -> |0.25-0.05| = 0.2, weight 0.5
    # bin (0.9, 1]: p=0.95 x4, y=(1,1,1,1) -> |1-0.95| = 0.05, weight 0.5   => ECE = 0.125
    y = [0, 0, 0, 1, 1, 1, 1, 1]
    p = [0.05] * 4 + [0.95] * 4
    assert M.expected_calibration_error(y, p) == pytest.approx(0.125)
    assert M.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    assert M.expected_calibration_error([1], [0.3], n_bins=1) == pytest.approx(0.7)


def test_ece_bins_agree_with_calibration_curve() -> None:
    y, p = noisy_scores(seed=2)
    p = np.concatenate([p, [0.1, 0.2, 0.9]])  # points exactly on bin edges
    y = np.concatenate([y, [1, 0, 1]])
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    ids = M._bin_ids(p, 10)
    counts = np.bincount(ids, minlength=10)
    counts = counts[counts > 0]
    assert M.expected_calibration_error(y, p) == pytest.approx(np.sum(counts * np.abs(prob_true - prob_pred)) / len(y))


def test_sens_spec_at_90_known_case() -> None:
    # 10 negatives at 0.0..0.9, 5 positives. FPR<=0.1 admits down to threshold 0.85 (1 FP: 0.9) -> TPR 3/5.
    neg = np.arange(10) / 10
    pos = np.array([0.95, 0.92, 0.85, 0.75, 0.05])
    y = np.r_[np.zeros(10, int), np.ones(5, int)]
    p = np.r_[neg, pos]
    r = M.ranking_metrics(y, p)
    assert r["sensitivity_at_90_specificity"] == pytest.approx(3 / 5)
    # TPR >= 0.9 needs all 5 positives -> threshold 0.05 -> only the negative at 0.0 is below -> spec 0.1
    assert r["specificity_at_90_sensitivity"] == pytest.approx(1 / 10)


# --- reports ---------------------------------------------------------------------------------------------------


def test_full_report_structure_and_json() -> None:
    y, p = noisy_scores(seed=5)
    r = M.full_report(y, p, threshold=0.45, n_boot=200)
    assert set(r) >= {"n", "n_pos", "ranking", "roc_auc_ci95", "at_0.5", "at_threshold", "warnings"}
    assert r["at_0.5"]["threshold"] == 0.5 and r["at_threshold"]["threshold"] == 0.45
    lo, hi = r["roc_auc_ci95"]
    assert lo <= r["ranking"]["roc_auc"] <= hi
    assert r["warnings"] == []
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_does_not_raise(label: int) -> None:
    y = np.full(30, label)
    p = np.linspace(0.05, 0.95, 30)
    r = M.full_report(y, p, 0.5, n_boot=50)
    assert r["ranking"]["roc_auc"] is None and r["ranking"]["pr_auc"] is None
    assert r["ranking"]["sensitivity_at_90_specificity"] is None
    assert r["roc_auc_ci95"] is None
    assert r["warnings"] and "one class" in r["warnings"][0]
    assert r["ranking"]["brier"] == pytest.approx(brier_score_loss(y, p, pos_label=1))
    json.dumps(r, allow_nan=False)


def test_grouped_report() -> None:
    y, p = noisy_scores(n=400, seed=6)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"label": y, "prob_malignant": p, "site": rng.choice(["back", "face", "leg"], len(y))})
    df.loc[:9, "site"] = "palm"  # tiny group -> no AUC
    df.loc[10:14, "site"] = None  # missing group
    rows = M.grouped_report(df, "site", threshold=0.5, min_n=20)
    by = {r["group"]: r for r in rows}
    assert set(by) == {"back", "face", "leg", "palm", None}
    assert sum(r["n"] for r in rows) == len(df)
    assert by["palm"]["roc_auc"] is None
    sub = df[df["site"] == "back"]
    assert by["back"]["roc_auc"] == pytest.approx(roc_auc_score(sub["label"], sub["prob_malignant"]))
    assert by["back"]["sensitivity"] == pytest.approx(recall_score(sub["label"], sub["prob_malignant"] >= 0.5))
    assert by["back"]["n_pos"] == int(sub["label"].sum())
    for r in rows:  # exact intervals that hold the point estimate; none where a group has no case of that class
        for rate, ci in (("sensitivity", "sensitivity_ci95"), ("specificity", "specificity_ci95")):
            if r[rate] is None:
                assert r[ci] is None
            else:
                assert 0.0 <= r[ci][0] <= r[rate] <= r[ci][1] <= 1.0
    json.dumps(rows, allow_nan=False)
    with pytest.raises(ValueError, match="not in DataFrame"):
        M.grouped_report(df, "nope", 0.5)


def test_grouped_report_age_bands_in_order() -> None:
    df = pd.DataFrame({"age": [25, 80, 50, 35, 65, None] * 5, "label": [0, 1] * 15, "prob_malignant": 0.5})
    df["band"] = df["age"].map(M.age_band)
    assert [r["group"] for r in M.grouped_report(df, "band", 0.5)] == list(M.AGE_BANDS)


def test_age_band() -> None:
    cases = {0: "<30", 29.9: "<30", 30: "30-44", 44: "30-44", 45: "45-59", 59: "45-59", 60: "60-74",
             74: "60-74", 75: "75+", 95: "75+", None: "unknown", float("nan"): "unknown", -3: "unknown",
             "abc": "unknown", "50": "45-59", np.int64(70): "60-74", 500: "unknown"}
    for age, band in cases.items():
        assert M.age_band(age) == band, age


# --- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([0, 1, 1], [0.1, 0.2], "length mismatch"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([0, 1], [0.1, 1.2], r"\[0, 1\]"),
        ([0, 2], [0.1, 0.2], "only 0"),
        ([0, 1], [[0.9, 0.1], [0.2, 0.8]], "1-D"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_raise(y, p, match) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        M.threshold_metrics(y, p, 0.5)
    with pytest.raises(ValueError, match=match):
        M.full_report(y, p, 0.5)


def test_bad_threshold() -> None:
    with pytest.raises(ValueError):
        M.threshold_metrics([0, 1], [0.1, 0.9], 1.5)


def test_grouped_report_treats_pandas_na_as_missing() -> None:
    import pandas as pd

    df = pd.DataFrame({"dx": pd.array(["mel", pd.NA, "nv", pd.NA], dtype="string"), "label": [1, 1, 0, 0],
                       "prob_malignant": [0.9, 0.2, 0.1, 0.7]})
    rows = {g["group"]: g for g in M.grouped_report(df, "dx", 0.5)}
    assert set(rows) == {"mel", "nv", None} and rows[None]["n"] == 2 and rows[None]["n_pos"] == 1


def test_multiclass_report_matches_sklearn() -> None:
    from sklearn.metrics import balanced_accuracy_score as bas

    rng = np.random.default_rng(5)
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    truth = rng.choice(classes, 300).astype(object)
    pred = np.where(rng.random(300) < 0.6, truth, rng.choice(classes, 300)).astype(object)
    truth[:7] = None  # unknown diagnoses are left out, and counted
    truth[7] = "scc"  # a diagnosis the model does not know
    r = M.multiclass_report(truth, pred, classes)
    known = np.isin(truth, classes)
    assert r["n"] == known.sum() and r["unscored"] == 8
    assert r["balanced_accuracy"] == pytest.approx(bas(truth[known].astype(str), pred[known].astype(str)))
    assert np.array_equal(np.asarray(r["confusion"]), confusion_matrix(truth[known].astype(str),
                                                                       pred[known].astype(str), labels=classes))
    assert M.multiclass_report([None], ["nv"], classes)["balanced_accuracy"] is None
