"""skinray.decision.calibration: temperature and Platt scaling on logits, and when they cannot be fitted."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import log_loss

from skinray.decision import calibration, metrics as M
from skinray.decision.calibration import Calibration
from skinray.decision.operating_point import OperatingPoint, ThresholdChoice


def _prob(logits: np.ndarray, t: float, b: float = 0.0) -> np.ndarray:
    return OperatingPoint(Calibration(method="platt", temperature=t, bias=b),
                          ThresholdChoice(threshold=0.5, policy="fixed")).apply(logits).prob


def test_fit_temperature_recovers_two() -> None:
    rng = np.random.default_rng(10)
    z = rng.normal(0.0, 1.5, 20_000)
    y = rng.binomial(1, expit(z))
    t = calibration.fit_temperature(y, 2.0 * z)  # logits over-confident by a factor 2
    assert abs(t - 2.0) < 0.3
    q = _prob(2.0 * z, t)
    assert q.dtype == np.float64 and q.shape == z.shape
    assert log_loss(y, q) < log_loss(y, expit(2.0 * z))
    np.testing.assert_allclose(_prob(z, 1.0), expit(z), atol=1e-12)


def test_fit_platt_undoes_the_class_weight_shift() -> None:
    rng = np.random.default_rng(11)
    z = rng.normal(-1.5, 1.5, 20_000)  # ~25% positives
    y = rng.binomial(1, expit(z))
    raw = 2.0 * z + np.log(4.0)  # over-confident and shifted as by a 4:1 class weight
    t, b = calibration.fit_platt(y, raw)
    assert abs(t - 2.0) < 0.3 and abs(b + np.log(4.0) / 2.0) < 0.2
    q = _prob(raw, t, b)
    assert M.expected_calibration_error(y, q) < 0.02
    assert M.expected_calibration_error(y, q) < M.expected_calibration_error(y, _prob(raw, calibration.fit_temperature(y, raw)))
    assert M.ranking_metrics(y, q)["roc_auc"] == pytest.approx(M.ranking_metrics(y, expit(raw))["roc_auc"])
    with pytest.raises(ValueError, match="both classes"):
        calibration.fit_platt([1, 1], [0.2, 0.3])


def test_fit_calibration_falls_back_when_it_cannot_fit() -> None:
    assert calibration.fit_calibration([1, 1, 0], [0.5, 0.5, 0.5], "platt").method == "none"  # a constant score
    assert calibration.fit_calibration([1, 1], [0.2, 0.3], "platt").method == "none"  # one class
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 400)
    y = rng.binomial(1, expit(z))
    assert calibration.fit_calibration(y, z, "temperature").bias == 0.0


@pytest.mark.parametrize("bad", [{"temperature": float("nan")}, {"temperature": 0.0}, {"bias": float("inf")}])
def test_calibration_refuses_non_finite_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        Calibration(method="platt", **bad)
