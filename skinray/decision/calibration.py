"""Calibration: how a model's logit becomes ``prob_malignant``, fitted on the validation split.

``prob_malignant = sigmoid(logit / temperature + bias)`` computed in float64: Platt scaling (temperature and bias),
temperature scaling alone, or none. Why a module of its own: the fit is the one place the logit's scale is set, and
the model directory (``skinray.json``), the ONNX export and the clinic refit all store or read a
:class:`Calibration`; :mod:`skinray.decision.operating_point` puts it together with the threshold.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from skinray.decision.inputs import ArrayLike, as_labels, two_classes

TEMPERATURE_BOUNDS = (0.05, 20.0)
CALIBRATION_METHODS = {
    "platt": "temperature and bias (Platt scaling on logits) fitted on validation",
    "temperature": "temperature scaling fitted on validation",
    "none": "none",
}


class Calibration(BaseModel):
    """``prob_malignant = sigmoid(logit / temperature + bias)``; finite numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["platt", "temperature", "none"] = "none"
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False)
    bias: float = Field(0.0, allow_inf_nan=False)

    @property
    def description(self) -> str:
        return CALIBRATION_METHODS[self.method]


# --- calibration ------------------------------------------------------------------------------------------------


def _as_logits(logits: ArrayLike) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 1 or z.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN/inf")
    return z


def fit_temperature(y_true: ArrayLike, logits: ArrayLike) -> float:
    """Temperature T minimising the NLL of sigmoid(logit / T); T > 1 softens over-confident scores."""
    y, z = as_labels(y_true), _as_logits(logits)
    if len(y) != len(z):
        raise ValueError(f"length mismatch: {len(y)} labels, {len(z)} logits")
    if not two_classes(y):
        raise ValueError("fit_temperature needs both classes in y_true (otherwise T runs to a bound)")
    yf = y.astype(np.float64)

    def nll(t: float) -> float:  # mean binary cross-entropy in its numerically stable form
        s = z / t
        return float(np.mean(np.logaddexp(0.0, s) - yf * s))

    from scipy.optimize import minimize_scalar

    res = minimize_scalar(nll, bounds=TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(res.x)


def fit_platt(y_true: ArrayLike, logits: ArrayLike) -> tuple[float, float]:
    """Temperature T and bias b for sigmoid(logit / T + b), by unregularised logistic regression on the logit.

    The bias is what temperature alone cannot fix: training with class weights shifts every logit by about
    log(w_malignant / w_benign), so a class-weighted model's raw scores overstate malignancy at every level.
    """
    from sklearn.linear_model import LogisticRegression

    y, z = as_labels(y_true), _as_logits(logits)
    if len(y) != len(z):
        raise ValueError(f"length mismatch: {len(y)} labels, {len(z)} logits")
    if not two_classes(y):
        raise ValueError("fit_platt needs both classes in y_true")
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(z.reshape(-1, 1), y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not (a > 1.0 / TEMPERATURE_BOUNDS[1]):  # scores anti- or un-correlated with the label: keep the ranking
        return fit_temperature(y, z), 0.0
    return float(min(1.0 / a, TEMPERATURE_BOUNDS[1])), b


def fit_calibration(y_true: ArrayLike, logits: ArrayLike, method: str) -> Calibration:
    """The calibration ``method`` asks for, or none when the labels or scores cannot support one."""
    y, z = as_labels(y_true), _as_logits(logits)
    if not two_classes(y) or float(np.std(z)) < 1e-9:  # one class, or a constant score: nothing to fit
        return Calibration(method="none")
    if method == "platt":
        t, b = fit_platt(y, z)
        return Calibration(method="platt", temperature=t, bias=b)
    if method == "temperature":
        return Calibration(method="temperature", temperature=fit_temperature(y, z))
    return Calibration(method="none")
