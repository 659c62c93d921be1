"""promises: the headline figures with intervals, and each promise marked held / not held / inconclusive."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from skinray.decision import promises
from skinray.decision.operating_point import DiagnosisSensitivity, ThresholdChoice

from conftest import noisy_scores


def test_figures_match_their_definitions():
    y, p = noisy_scores(400, seed=1)
    dx = np.where(np.arange(400) % 3 == 0, "mel", "bcc").astype(object)
    fig = promises.figures(y, p, 0.5, dx, n_boot=200)
    pos, flagged = y == 1, p >= 0.5
    mel = pos & (dx == "mel")
    assert fig["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert fig["sensitivity"] == pytest.approx(flagged[pos].mean())
    assert fig["melanoma_sensitivity"] == pytest.approx(flagged[mel].mean()) and fig["n_melanoma"] == mel.sum()
    assert fig["specificity"] == pytest.approx((~flagged[~pos]).mean())
    for name in ("roc_auc", "sensitivity", "melanoma_sensitivity", "specificity", "ece"):
        lo, hi = fig[f"{name}_ci95"]
        assert lo <= fig[name] <= hi or name == "ece"  # a bootstrap ECE interval can sit above a small ECE
    missing = dx.copy()
    missing[::5] = None  # a diagnosis the manifest does not give (ISIC 2017's benign rows) is simply not melanoma
    with_na = promises.figures(y, p, 0.5, pd.array(missing, dtype="string"), n_boot=50)
    assert with_na["n_melanoma"] == int((pos & (missing == "mel")).sum())
    frame = pd.DataFrame({"label": y, "prob_malignant": p, "dx": pd.array(missing, dtype="string"),
                          "source": np.where(np.arange(400) % 2, "a", "b")})
    assert set(promises.by_source(frame, 0.5, 50)) == {"a", "b"}
    none = promises.figures(np.zeros(30, int), np.full(30, 0.2), 0.5, n_boot=50)
    assert none["sensitivity"] is None and none["roc_auc"] is None and none["specificity"] == 1.0


@pytest.mark.parametrize("value, ci, direction, status", [
    (0.90, [0.80, 0.95], "at least", "held"),
    (0.80, [0.70, 0.88], "at least", "inconclusive"),
    (0.60, [0.50, 0.70], "at least", "not held"),
    (0.04, [0.02, 0.08], "at most", "held"),
    (0.09, [0.07, 0.12], "at most", "not held"),
    (0.07, [0.03, 0.10], "at most", "inconclusive"),
])
def test_a_promise_is_held_not_held_or_inconclusive(value, ci, direction, status):
    p = promises.Promise("sensitivity" if direction == "at least" else "ece",
                         0.85 if direction == "at least" else 0.05, direction, "test")
    fig = {p.name: value, f"{p.name}_ci95": ci}
    assert p.measure(fig).status == status
    assert p.measure({}).status == "not measured"


def test_the_model_promises_what_its_threshold_and_validation_say():
    class Meta:
        threshold = ThresholdChoice(threshold=0.3, policy="sensitivity", target_sensitivity=0.85, confidence=0.95,
                                    diagnoses={"mel": DiagnosisSensitivity(target=0.8, n=90)})
        validation = {"roc_auc_ci95": [0.86, 0.92], "ranking": {"ece": 0.02},
                      "at_threshold": {"confusion": {"tn": 600, "fp": 200, "fn": 20, "tp": 140}}}

    made = {p.name: p for p in promises.promised(Meta)}
    assert made["sensitivity"].promised == 0.85 and made["melanoma_sensitivity"].promised == 0.8
    assert made["roc_auc"].promised == 0.86 and made["ece"].promised == promises.ECE_FLOOR  # never below the floor
    assert 0.70 < made["specificity"].promised < 0.75  # the lower exact bound of 600/800, not the point
    checked = [p.measure({"sensitivity": 0.5, "sensitivity_ci95": [0.4, 0.6]}) for p in made.values()]
    line = promises.verdict(checked)
    assert "NOT HELD: sensitivity" in line and "\n" not in line
    assert promises.verdict([made["roc_auc"].measure({"roc_auc": 0.9})]) == "1 of 1 promises held"
