"""skinray.metrics: every number checked against an independent sklearn computation or a hand-worked case."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.special import expit
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

from skinray import metrics as M


def _data(n: int = 500, seed: int = 0, shift: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.4 + shift * y, 0.2), 0.0, 1.0)
    return y, p


def _is_png(path: str) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 100 and im.height > 100


# --- threshold metrics -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_threshold_metrics_match_sklearn(threshold: float) -> None:
    y, p = _data()
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
    y, p = _data(seed=1)
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
    y, p = _data(seed=2)
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


# --- bootstrap -------------------------------------------------------------------------------------------------


def test_vectorised_resample_auc_equals_sklearn() -> None:
    y, p = _data(n=300, seed=3)
    p = np.round(p, 2)  # plenty of ties
    uniq, rank = np.unique(p, return_inverse=True)
    idx = np.random.default_rng(0).integers(0, len(y), size=(25, len(y)))
    got = M._auc_of_resamples(y, rank.astype(np.int64), len(uniq), idx)
    want = [roc_auc_score(y[i], p[i]) for i in idx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_bootstrap_ci_contains_auc_and_narrows() -> None:
    y_small, p_small = _data(n=200, seed=4)
    y_big, p_big = _data(n=2000, seed=4)
    lo_s, hi_s = M.bootstrap_auc_ci(y_small, p_small, n_boot=500, seed=0)
    t0 = time.perf_counter()
    lo_b, hi_b = M.bootstrap_auc_ci(y_big, p_big, n_boot=1000, seed=0)
    assert time.perf_counter() - t0 < 2.0
    assert lo_s <= roc_auc_score(y_small, p_small) <= hi_s
    assert lo_b <= roc_auc_score(y_big, p_big) <= hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s)
    assert M.bootstrap_auc_ci(y_big, p_big, n_boot=200, seed=7) == M.bootstrap_auc_ci(y_big, p_big, n_boot=200, seed=7)


def test_bootstrap_skips_single_class_resamples() -> None:
    lo, hi = M.bootstrap_auc_ci([0, 1, 0], [0.2, 0.8, 0.4], n_boot=300)  # many resamples lack the positive
    assert lo == hi == 1.0
    with pytest.raises(ValueError, match="both classes"):
        M.bootstrap_auc_ci([1, 1], [0.2, 0.3])


# --- reports ---------------------------------------------------------------------------------------------------


def test_full_report_structure_and_json() -> None:
    y, p = _data(seed=5)
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
    y, p = _data(n=400, seed=6)
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


# --- thresholds and temperature --------------------------------------------------------------------------------


def test_choose_threshold_youden_separable() -> None:
    neg, pos = np.array([0.1, 0.2, 0.3, 0.35]), np.array([0.6, 0.7, 0.9])
    y, p = np.r_[np.zeros(4, int), np.ones(3, int)], np.r_[neg, pos]
    c = M.choose_threshold(y, p, "youden")
    assert neg.max() < c["threshold"] <= pos.min()
    assert c["sensitivity"] == 1.0 and c["specificity"] == 1.0 and c["policy"] == "youden"


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_choose_threshold_sensitivity_policy(target: float) -> None:
    y, p = _data(seed=8)
    c = M.choose_threshold(y, p, "sensitivity", target_sensitivity=target)
    assert c["sensitivity"] >= target and 0.0 < c["threshold"] < 1.0
    assert c["sensitivity"] == pytest.approx(recall_score(y, p >= c["threshold"]))
    # highest such threshold: the next score above it loses the target
    higher = p[p > c["threshold"]]
    if higher.size:
        assert recall_score(y, p >= higher.min()) < target


@pytest.mark.parametrize("target, confidence", [(0.8, 0.95), (0.85, 0.9)])
def test_choose_threshold_with_confidence_bound(target: float, confidence: float) -> None:
    from scipy.stats import binomtest

    y, p = _data(seed=10)
    plain = M.choose_threshold(y, p, "sensitivity", target_sensitivity=target)
    c = M.choose_threshold(y, p, "sensitivity", target_sensitivity=target, confidence=confidence)
    n_pos = int(y.sum())
    tp = int(((p >= c["threshold"]) & (y == 1)).sum())
    # the one-sided bound is the lower end of the exact two-sided interval at level 2c - 1
    exact = binomtest(tp, n_pos).proportion_ci(confidence_level=2 * confidence - 1, method="exact").low
    assert c["sensitivity_lower_bound"] == pytest.approx(exact, abs=1e-9) and c["target_met"]
    assert c["sensitivity_lower_bound"] >= target and c["threshold"] <= plain["threshold"]
    higher = p[p > c["threshold"]]  # the highest such threshold: one score higher breaks the bound
    if higher.size:
        tp_up = int(((p >= higher.min()) & (y == 1)).sum())
        assert M.sensitivity_lower_bound(tp_up, n_pos, confidence) < target


def test_choose_threshold_unreachable_bound_catches_every_positive() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    c = M.choose_threshold(y, p, "sensitivity", target_sensitivity=0.95, confidence=0.95)  # 3 positives: never
    assert c["sensitivity"] == 1.0 and not c["target_met"] and c["sensitivity_lower_bound"] < 0.95


def test_choose_threshold_fixed_and_errors() -> None:
    y, p = _data(seed=9)
    assert M.choose_threshold(y, p, "fixed")["threshold"] == 0.5
    with pytest.raises(ValueError):
        M.choose_threshold(y, p, "sensitivity")
    with pytest.raises(ValueError):
        M.choose_threshold(y, p, "magic")


def test_choose_threshold_clips_inf() -> None:
    y, p = [1, 0, 1, 0], [0.2, 0.9, 0.1, 0.8]  # inverted scorer: best J is the +inf threshold
    t = M.choose_threshold(y, p, "youden")["threshold"]
    assert 0.0 < t < 1.0


def test_fit_temperature_recovers_two() -> None:
    rng = np.random.default_rng(10)
    z = rng.normal(0.0, 1.5, 20_000)
    y = rng.binomial(1, expit(z))
    p = expit(2.0 * z)  # over-confident by a factor 2
    t = M.fit_temperature(y, p)
    assert abs(t - 2.0) < 0.3
    q = M.apply_temperature(p, t)
    assert q.dtype == np.float32 and q.shape == p.shape
    assert log_loss(y, q.astype(np.float64)) < log_loss(y, p)
    np.testing.assert_allclose(M.apply_temperature(p, 1.0), p, atol=1e-6)


def test_fit_platt_undoes_the_class_weight_shift() -> None:
    rng = np.random.default_rng(11)
    z = rng.normal(-1.5, 1.5, 20_000)  # ~25% positives
    y = rng.binomial(1, expit(z))
    p = expit(2.0 * z + np.log(4.0))  # over-confident and shifted as by a 4:1 class weight
    t, b = M.fit_platt(y, p)
    assert abs(t - 2.0) < 0.3 and abs(b + np.log(4.0) / 2.0) < 0.2
    q = M.apply_temperature(p, t, b)
    assert M.expected_calibration_error(y, q) < 0.02
    assert M.expected_calibration_error(y, q) < M.expected_calibration_error(y, M.apply_temperature(p, M.fit_temperature(y, p)))
    assert M.ranking_metrics(y, q)["roc_auc"] == pytest.approx(M.ranking_metrics(y, p)["roc_auc"])
    with pytest.raises(ValueError, match="both classes"):
        M.fit_platt([1, 1], [0.2, 0.3])


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


def test_bad_threshold_and_temperature() -> None:
    with pytest.raises(ValueError):
        M.threshold_metrics([0, 1], [0.1, 0.9], 1.5)
    with pytest.raises(ValueError):
        M.apply_temperature([0.2], 0.0)
    with pytest.raises(ValueError):
        M.apply_temperature([0.2, -0.1], 1.0)


# --- plots -----------------------------------------------------------------------------------------------------


def test_plots_write_pngs(tmp_path) -> None:  # noqa: ANN001
    y, p = _data(seed=11)
    paths = [
        M.plot_roc(y, p, tmp_path / "roc.png", threshold=0.5),
        M.plot_pr(y, p, tmp_path / "pr.png"),
        M.plot_confusion(y, p, 0.5, tmp_path / "cm.png"),
        M.plot_calibration(y, p, tmp_path / "cal.png"),
        M.plot_score_histogram(p, tmp_path / "hist_plain.png"),
        M.plot_score_histogram(p, tmp_path / "sub" / "hist.png", threshold=0.5, y_true=y),
    ]
    for path in paths:
        assert isinstance(path, str)
        _is_png(path)


def test_plots_single_class_and_no_pyplot_leak(tmp_path) -> None:  # noqa: ANN001
    import sys

    y, p = np.zeros(10, int), np.linspace(0, 1, 10)
    _is_png(M.plot_roc(y, p, tmp_path / "roc1.png", threshold=0.5))
    _is_png(M.plot_pr(y, p, tmp_path / "pr1.png"))
    _is_png(M.plot_confusion(y, p, 0.5, tmp_path / "cm1.png"))
    if "matplotlib.pyplot" in sys.modules:  # something else imported pyplot: make sure we left no figures
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_plot_length_mismatch(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="length mismatch"):
        M.plot_roc([0, 1, 1], [0.2, 0.3], tmp_path / "x.png")


# --- contact sheet ---------------------------------------------------------------------------------------------


def _images(n: int) -> list:
    rng = np.random.default_rng(12)
    out: list = []
    for i in range(n):
        if i % 3 == 0:
            out.append(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))  # portrait uint8
        elif i % 3 == 1:
            out.append(rng.random((40, 80)))  # grayscale float in [0, 1]
        else:
            out.append(Image.new("RGBA", (90, 90), (200, 120, 90, 255)))
    return out


def test_contact_sheet_one_image(tmp_path) -> None:  # noqa: ANN001
    path = M.contact_sheet(_images(1), ["SYN_0001\n0.87 malignant"], tmp_path / "one.png", highlight=[True])
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width < 300  # one column, not six


def test_contact_sheet_thirteen_images(tmp_path) -> None:  # noqa: ANN001
    caps = [f"SYN_{i:04d}\n{i / 13:.2f} {'malignant' if i % 2 else 'benign'}" for i in range(13)]
    path = M.contact_sheet(_images(13), caps, tmp_path / "sheet.png", cols=6, thumb=96,
                           highlight=[i % 4 == 0 for i in range(13)])
    with Image.open(path) as im:
        assert im.format == "PNG" and im.height > im.width / 6 * 2  # 3 rows


def test_contact_sheet_mismatch() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        M.contact_sheet(_images(2), ["a"], "unused.png")
    with pytest.raises(ValueError, match="length mismatch"):
        M.contact_sheet(_images(2), ["a", "b"], "unused.png", highlight=[True])


def test_grouped_report_treats_pandas_na_as_missing() -> None:
    import pandas as pd

    df = pd.DataFrame({"dx": pd.array(["mel", pd.NA, "nv", pd.NA], dtype="string"), "label": [1, 1, 0, 0],
                       "prob_malignant": [0.9, 0.2, 0.1, 0.7]})
    rows = {g["group"]: g for g in M.grouped_report(df, "dx", 0.5)}
    assert set(rows) == {"mel", "nv", None} and rows[None]["n"] == 2 and rows[None]["n_pos"] == 1
