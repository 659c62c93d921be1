"""The operating point: how a model's logit becomes ``prob_malignant`` and a decision, in one place.

A model outputs a *logit* (never a sigmoid: a float32 sigmoid is exactly 1.0 above logit ~17, which tied 16% of a
demo's images at the top of the ranking). On the validation split this module fits

* a **calibration**: ``calibrated logit = logit / temperature + bias`` (Platt scaling; ``temperature`` alone, or
  none), and ``prob_malignant = sigmoid(calibrated logit)`` computed in float64;
* a **threshold** on that probability, chosen by a policy (a sensitivity target promised with a confidence bound,
  Youden's J, or a fixed 0.5), lowered where needed so that named diagnoses (melanoma) reach their own
  sensitivity targets too: a threshold that meets 0.85 overall can still miss a third of melanomas when
  carcinomas, which score higher, carry the overall figure. With cross-validation the threshold can also be made to
  hold across the folds' networks, not only across images (:func:`spread_bound`).

Both are stored in the model directory (``skinray.json``: :class:`Calibration`, :class:`ThresholdChoice`), applied
by :meth:`OperatingPoint.apply` wherever a model scores, and put into words by :func:`describe`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.special import expit

from skinray.decision.metrics import (
    DEFAULT_THRESHOLD,
    ROC_TOL,
    ArrayLike,
    as_labels,
    full_report,
    sklearn_metrics,
    threshold_metrics,
    two_classes,
    validate,
)

THRESHOLD_POLICIES = ("youden", "sensitivity", "fixed")
THRESHOLD_CLIP = (1e-6, 1.0 - 1e-6)  # chosen thresholds live strictly inside (0, 1); roc_curve's first is +inf
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
    temperature: float = Field(1.0, gt=0)
    bias: float = 0.0

    @field_validator("temperature", "bias")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @property
    def description(self) -> str:
        return CALIBRATION_METHODS[self.method]


class DiagnosisSensitivity(BaseModel):
    """One diagnosis' target at the stored threshold and what the validation split gave."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: float = Field(gt=0, le=1)
    n: int = Field(ge=0)  # validation images of this diagnosis
    sensitivity: float | None = None
    lower_bound: float | None = None  # one-sided exact bound at the threshold's confidence (None without one)
    met: bool | None = None  # None: no image of this diagnosis in the validation split, so no promise


class FoldSpread(BaseModel):
    """The stored threshold in each fold of a cross-validation (``train.threshold_fold_spread``): what a promise
    that covers the spread between trained networks, not only the sampling of images, rests on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folds: int = Field(ge=2)
    sensitivity: list[float]  # per fold, at the stored threshold
    prediction_bound: float  # :func:`spread_bound`: one more network's sensitivity, at the threshold's confidence
    between_network_sd: float = 0.0  # the folds' spread less the images' (random-effects estimate)
    diagnoses: dict[str, list[float]] = Field(default_factory=dict)  # per named diagnosis, per fold (with images)
    diagnosis_bounds: dict[str, float] = Field(default_factory=dict)
    lowered: bool = False  # counting the spread lowered the threshold below the one the pooled bound gives


class ThresholdChoice(BaseModel):
    """The decision threshold on ``prob_malignant`` and what it gave on the validation split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(ge=0, le=1)
    policy: str
    target_sensitivity: float | None = Field(None, gt=0, le=1)
    sensitivity: float | None = None
    specificity: float | None = None
    confidence: float | None = Field(None, gt=0, lt=1)
    sensitivity_lower_bound: float | None = None
    target_met: bool | None = None
    diagnoses: dict[str, DiagnosisSensitivity] | None = None  # per-diagnosis targets, when any were asked for
    lowered_for: list[str] | None = None  # the diagnoses whose targets lowered the policy's threshold
    fold_spread: FoldSpread | None = None  # cross-validated models with train.threshold_fold_spread

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number in [0, 1]")
        return v


@dataclass(frozen=True)
class Scored:
    """What a model's logits become: the calibrated logit, the probability (float64), the decision."""

    logit: np.ndarray  # calibrated: logit / T + b; ranks without ties where the raw logits differ
    prob: np.ndarray  # float64 sigmoid of ``logit``
    malignant: np.ndarray  # bool: prob >= threshold
    confidence: np.ndarray  # probability of the predicted class


@dataclass(frozen=True)
class OperatingPoint:
    calibration: Calibration
    threshold: ThresholdChoice

    @property
    def raw_threshold(self) -> float:
        """The threshold as an uncalibrated logit, the engine's own units (±inf for a threshold of 0 or 1)."""
        t = self.threshold.threshold
        with np.errstate(divide="ignore"):
            z = float(np.log(t) - np.log1p(-t))
        return (z - self.calibration.bias) * self.calibration.temperature

    def apply(self, logits: ArrayLike) -> Scored:
        z = np.asarray(logits, dtype=np.float64) / self.calibration.temperature + self.calibration.bias
        prob = expit(z)
        malignant = prob >= self.threshold.threshold
        return Scored(logit=z, prob=prob, malignant=malignant, confidence=np.where(malignant, prob, 1.0 - prob))


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


# --- threshold --------------------------------------------------------------------------------------------------


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


def _threshold_catching(scores: np.ndarray, target: float, confidence: float | None) -> tuple[float, bool]:
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


def _caught_per_group(scores: np.ndarray, groups: np.ndarray, thresholds: np.ndarray
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


def _threshold_across_groups(scores: np.ndarray, groups: np.ndarray, target: float, confidence: float
                             ) -> float | None:
    """The highest threshold at and below which :func:`spread_bound` reaches ``target`` (the bound need not fall
    monotonically, so a lucky peak above a gap does not count); None with fewer than two groups holding positives."""
    desc = np.sort(scores)[::-1]
    caught, n = _caught_per_group(scores, groups, desc)
    if len(n) < 2:
        return None
    short = np.flatnonzero(spread_bound(caught, n, confidence)[0] < float(target) - ROC_TOL)
    k = int(short[-1]) + 1 if len(short) else 0
    return float(desc[min(k, len(desc) - 1)])


def _fold_spread(y: np.ndarray, p: np.ndarray, groups: np.ndarray, t: float, confidence: float,
                 codes: np.ndarray | None, targets: dict[str, float], lowered: bool) -> FoldSpread | None:
    def at_t(mask: np.ndarray) -> tuple[list[float], float, float] | None:
        caught, n = _caught_per_group(p[mask], groups[mask], np.array([t]))
        if len(n) < 2:
            return None
        bound, sd = spread_bound(caught, n, confidence)
        return [float(v) for v in caught[:, 0] / n], float(bound[0]), float(sd[0])

    overall = at_t(y == 1)
    if overall is None:
        return None
    per_dx = {name: at_t((y == 1) & (codes == name)) for name in targets}
    per_dx = {name: v for name, v in per_dx.items() if v is not None}
    return FoldSpread(folds=len(np.unique(groups)), sensitivity=overall[0], prediction_bound=overall[1],
                      between_network_sd=overall[2], diagnoses={k: v[0] for k, v in per_dx.items()},
                      diagnosis_bounds={k: v[1] for k, v in per_dx.items()}, lowered=lowered)


def _diagnosis_sensitivity(p: np.ndarray, dx: np.ndarray, name: str, target: float, threshold: float,
                           confidence: float | None) -> DiagnosisSensitivity:
    scores = p[dx == name]
    if not len(scores):
        return DiagnosisSensitivity(target=target, n=0)
    caught = int((scores >= threshold).sum())
    bound = None if confidence is None else float(sensitivity_lower_bound(caught, len(scores), confidence))
    met = (bound if bound is not None else caught / len(scores)) >= target - ROC_TOL
    return DiagnosisSensitivity(target=target, n=len(scores), sensitivity=caught / len(scores), lower_bound=bound,
                                met=bool(met))


def choose_threshold(
    y_true: ArrayLike, prob: ArrayLike, policy: str = "youden", target_sensitivity: float | None = None,
    confidence: float | None = None, dx: ArrayLike | None = None,
    diagnosis_targets: dict[str, float] | None = None, groups: ArrayLike | None = None,
) -> dict[str, Any]:
    """Pick an operating threshold on validation data and report the sensitivity/specificity it gives there.

    youden: maximise TPR - FPR; sensitivity: the highest threshold with TPR >= target_sensitivity, or with
    ``confidence``, the highest whose lower confidence bound on sensitivity reaches the target (a promise about new
    data, not about the validation split); fixed: 0.5. ``diagnosis_targets`` (``{"mel": 0.80}``, with ``dx`` the
    rows' diagnoses) lower a youden or sensitivity threshold until each named diagnosis' malignant images reach their
    own target, with the same confidence; a diagnosis absent from ``dx`` is reported with n = 0 and no promise.
    ``groups`` (the fold of each row, with out-of-fold scores) lowers a sensitivity threshold with a confidence
    further, until :func:`spread_bound` over the folds (overall and per named diagnosis) reaches each target too: a
    promise about the next trained network, not only the next images.
    Thresholds are clipped into (0, 1) and measured after clipping, so the numbers are honest.
    """
    y, p = validate(y_true, prob)
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"policy must be one of {THRESHOLD_POLICIES}, got {policy!r}")
    if policy == "sensitivity":
        if target_sensitivity is None or not (0.0 < float(target_sensitivity) <= 1.0):
            raise ValueError(f"policy 'sensitivity' needs target_sensitivity in (0, 1], got {target_sensitivity!r}")
    if confidence is not None and not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    targets = dict(diagnosis_targets or {})
    if targets and policy != "fixed":
        if dx is None or len(dx) != len(y):
            raise ValueError("diagnosis_targets need one diagnosis per row in dx")
        for name, target in targets.items():
            if not (0.0 < float(target) <= 1.0):
                raise ValueError(f"diagnosis target for {name!r} must be in (0, 1], got {target!r}")
    spread = groups is not None and policy == "sensitivity" and confidence is not None
    if spread:
        g = np.asarray(groups)
        if g.shape != y.shape or len(np.unique(g)) < 2:
            raise ValueError("groups need one group per row and at least two groups")
    n_pos = int(y.sum())
    lowered: list[str] = []
    spread_lowered = False
    codes = np.asarray(dx, dtype=object) if targets else None
    if policy == "fixed":
        t, targets = DEFAULT_THRESHOLD, {}
    else:
        if not two_classes(y):
            raise ValueError(f"choose_threshold(policy={policy!r}) needs both classes in y_true")
        if policy == "youden":
            fpr, tpr, thr = sklearn_metrics().roc_curve(y, p, pos_label=1, drop_intermediate=False)
            t = float(thr[int(np.argmax(tpr - fpr))])  # first maximum = highest threshold among ties
        else:
            t, _ = _threshold_catching(p[y == 1], float(target_sensitivity), confidence)
        # every target is met by any threshold below its own highest one, so the joint answer is the lowest of them
        for name, target in targets.items():
            scores = p[(codes == name) & (y == 1)]
            if len(scores):
                own, _ = _threshold_catching(scores, float(target), confidence)
                if own < t:
                    t, lowered = own, [*lowered, name]
        if spread:
            masks = [y == 1] + [(codes == name) & (y == 1) for name in targets]
            goals = [float(target_sensitivity)] + [float(v) for v in targets.values()]
            for mask, goal in zip(masks, goals):
                own = _threshold_across_groups(p[mask], g[mask], goal, float(confidence)) if mask.any() else None
                if own is not None and own < t:
                    t, spread_lowered = own, True
        t = float(np.clip(t, *THRESHOLD_CLIP))
    tm = threshold_metrics(y, p, t)
    out: dict[str, Any] = {
        "threshold": t,
        "policy": policy,
        "target_sensitivity": None if target_sensitivity is None else float(target_sensitivity),
        "sensitivity": tm["sensitivity"],
        "specificity": tm["specificity"],
    }
    if confidence is not None and policy == "sensitivity":
        bound = float(sensitivity_lower_bound(round(tm["sensitivity"] * n_pos), n_pos, float(confidence)))
        out.update(confidence=float(confidence), sensitivity_lower_bound=bound,
                   target_met=bool(bound >= float(target_sensitivity) - ROC_TOL))
    if targets:
        out.update(diagnoses={name: _diagnosis_sensitivity(p[y == 1], codes[y == 1], name, float(target), t,
                                                           confidence) for name, target in targets.items()},
                   lowered_for=lowered)
    if spread:
        out["fold_spread"] = _fold_spread(y, p, g, t, float(confidence), codes, targets, spread_lowered)
    return out


# --- the whole fit, and its description ------------------------------------------------------------------------


def fit(y_val: ArrayLike, logits_val: ArrayLike, calibration: str, policy: str,
        target_sensitivity: float | None, confidence: float | None, dx_val: ArrayLike | None = None,
        diagnosis_targets: dict[str, float] | None = None, groups: ArrayLike | None = None,
        ) -> tuple[OperatingPoint, dict[str, Any] | None]:
    """Calibration, threshold and the validation report, all from the validation split's logits (with ``groups``,
    out-of-fold logits and their folds: see :func:`choose_threshold`)."""
    y = as_labels(y_val)
    cal = fit_calibration(y, logits_val, calibration)
    prob = OperatingPoint(cal, ThresholdChoice(threshold=0.5, policy="fixed")).apply(logits_val).prob
    both = two_classes(y)
    if both and policy != "fixed":
        choice = choose_threshold(y, prob, policy, target_sensitivity, confidence, dx_val, diagnosis_targets, groups)
    else:
        choice = {"threshold": DEFAULT_THRESHOLD, "policy": "fixed" if both else "fixed (val split has one class)"}
    report = full_report(y, prob, choice["threshold"], n_boot=200) if both else None
    return OperatingPoint(cal, ThresholdChoice(**choice)), report


def describe(threshold: ThresholdChoice) -> str:
    """How the stored threshold was chosen, in words a report reader can check."""
    if threshold.policy != "sensitivity" or threshold.target_sensitivity is None:
        text = threshold.policy
    else:
        text = f"sensitivity ≥ {threshold.target_sensitivity:.2f}"
    if threshold.policy == "sensitivity" and threshold.confidence is not None and threshold.sensitivity is not None:
        text += (f" with {threshold.confidence:.0%} confidence: validation sensitivity "
                 f"{threshold.sensitivity:.3f}, lower bound {threshold.sensitivity_lower_bound or 0.0:.3f}")
        if threshold.target_met is False:
            text += ", target not reachable on this validation split"
    diagnoses = threshold.diagnoses or {}
    absent = [name for name, d in diagnoses.items() if not d.n]
    if absent and len(absent) == len(diagnoses):  # e.g. HAM10000's "mel" and ISIC's "melanoma": say so once
        text += f"; no {', '.join(absent)} in the validation split: no per-diagnosis promise"
    for name, d in diagnoses.items():
        if not d.n:
            continue
        measured = "n/a" if d.sensitivity is None else f"{d.sensitivity:.3f}"
        text += f"; {name} ≥ {d.target:.2f}: validation sensitivity {measured} over {d.n} images"
        if d.lower_bound is not None:
            text += f", lower bound {d.lower_bound:.3f}"
        if d.met is False:
            text += " (not reachable)"
        elif name in (threshold.lowered_for or []):
            text += " (lowered the threshold)"
    spread = threshold.fold_spread
    if spread is not None:
        text += (f"; across {spread.folds} folds: sensitivity {min(spread.sensitivity):.3f}-"
                 f"{max(spread.sensitivity):.3f} (between networks SD {spread.between_network_sd:.3f}), "
                 f"{threshold.confidence or 0.95:.0%} bound for a new network {spread.prediction_bound:.3f}")
        text += "".join(f", {name} {b:.3f}" for name, b in spread.diagnosis_bounds.items())
        if spread.lowered:
            text += " (the spread lowered the threshold)"
    return text
