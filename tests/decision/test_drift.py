"""skinray.decision.drift: the validation profile and its comparison with a run, without Ray."""

import numpy as np
import pandas as pd
import pytest

from skinray.decision import drift


def _frame(n: int, seed: int, red_shift: float = 0.0, older: float = 0.0, sites=("back", "face")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "prob_malignant": rng.beta(2, 6, n), "age_approx": rng.normal(55 + older, 12, n).round(),
        "sex": rng.choice(["male", "female"], n), "anatom_site_general": rng.choice(list(sites), n),
        "image_width": 600, "image_height": 450,
        "mean_red": rng.normal(150 + red_shift, 12, n), "mean_green": rng.normal(110, 10, n),
        "mean_blue": rng.normal(100, 10, n)})


def test_the_same_population_does_not_drift():
    ref = drift.profile(_frame(800, 0))
    result = drift.compare(ref, _frame(500, 1))
    assert result["reference"] and not result["drifted"] and result["flagged"] == []
    assert {r["column"] for r in result["columns"]} == set(drift.NUMERIC) | set(drift.CATEGORICAL)
    assert all(r["psi"] < 0.1 for r in result["columns"])


def test_shifted_colour_age_and_sites_drift():
    ref = drift.profile(_frame(800, 0))
    result = drift.compare(ref, _frame(500, 2, red_shift=40, older=20, sites=("palms/soles",)))
    assert result["drifted"]
    assert {"mean_red", "age_approx", "anatom_site_general"} <= set(result["flagged"])
    assert "prob_malignant" not in result["flagged"] and "sex" not in result["flagged"]
    red = next(r for r in result["columns"] if r["column"] == "mean_red")
    assert red["psi"] > 1 and red["ks_pvalue"] < 1e-10 and red["mean"] > red["reference_mean"] + 30


def test_a_handful_of_rows_is_reported_but_never_flagged():
    ref = drift.profile(_frame(800, 0))
    result = drift.compare(ref, _frame(10, 3, red_shift=80))
    assert not result["drifted"] and all(r["reason"] == "too few rows to judge" for r in result["columns"])


def test_missing_columns_and_no_reference():
    ref = drift.profile(_frame(300, 0).drop(columns=["age_approx"]))
    assert "age_approx" not in ref["columns"]
    folder_run = _frame(200, 4)[["prob_malignant", "image_width", "image_height", "mean_red", "mean_green",
                                 "mean_blue"]]  # an image folder: no metadata
    result = drift.compare(ref, folder_run)
    assert {r["column"] for r in result["columns"]} <= set(drift.NUMERIC)
    assert drift.compare(None, folder_run) == {**drift.compare(None, folder_run), "reference": False,
                                               "drifted": False}


@pytest.mark.parametrize("expected, actual, value", [([0.5, 0.5], [0.5, 0.5], 0.0), ([0.9, 0.1], [0.1, 0.9], 3.5156)])
def test_psi(expected, actual, value):
    assert drift.psi(expected, actual) == pytest.approx(value, abs=1e-3)


def test_a_constant_reference_compares_values_not_float_noise():
    ref = drift.profile(pd.DataFrame({"prob_malignant": np.full(200, 0.25007048782586805), "image_width": 600}))
    assert "constant" in ref["columns"]["prob_malignant"] and "constant" in ref["columns"]["image_width"]
    noise = pd.DataFrame({"prob_malignant": 0.25007048782 + np.random.default_rng(0).normal(0, 1e-12, 120),
                          "image_width": 600})
    assert not drift.compare(ref, noise)["drifted"]
    resized = pd.DataFrame({"prob_malignant": np.full(120, 0.25007048782586805), "image_width": 1024})
    assert drift.compare(ref, resized)["flagged"] == ["image_width"]
