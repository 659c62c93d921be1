"""The operating point: how a model's logit becomes ``prob_malignant`` and a decision, in one place.

A model outputs a *logit* (never a sigmoid: a float32 sigmoid is exactly 1.0 above logit ~17, which tied 16% of a
demo's images at the top of the ranking). On the validation split this module fits

* a **calibration** (:mod:`skinray.decision.calibration`): ``calibrated logit = logit / temperature + bias`` (Platt
  scaling; ``temperature`` alone, or none), and ``prob_malignant = sigmoid(calibrated logit)`` computed in float64;
* a **threshold** on that probability, chosen by a policy (a sensitivity target promised with a confidence bound,
  Youden's J, or a fixed 0.5), lowered where needed so that named diagnoses (melanoma) reach their own
  sensitivity targets too: a threshold that meets 0.85 overall can still miss a third of melanomas when
  carcinomas, which score higher, carry the overall figure. With cross-validation the threshold can also be made to
  hold across the folds' networks, not only across images (:func:`skinray.decision.bounds.spread_bound`).

Both are stored in the model directory (``skinray.json``: :class:`Calibration`, :class:`ThresholdChoice`), applied
by :meth:`OperatingPoint.apply` wherever a model scores, and put into words by :func:`describe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import expit

from skinray.decision.bounds import (
    caught_per_group,
    sensitivity_lower_bound,
    spread_bound,
    threshold_across_groups,
    threshold_catching,
)
from skinray.decision.calibration import Calibration, fit_calibration
from skinray.decision.inputs import ArrayLike, as_labels, sklearn_metrics, two_classes, validate
from skinray.decision.metrics import DEFAULT_THRESHOLD, ROC_TOL, full_report, threshold_metrics

THRESHOLD_POLICIES = ("youden", "sensitivity", "fixed")
THRESHOLD_CLIP = (1e-6, 1.0 - 1e-6)  # chosen thresholds live strictly inside (0, 1); roc_curve's first is +inf


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

    threshold: float = Field(ge=0, le=1, allow_inf_nan=False)
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


# --- threshold --------------------------------------------------------------------------------------------------


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
    targets = _checked_targets(y, policy, target_sensitivity, confidence, dx, diagnosis_targets)
    spread = groups is not None and policy == "sensitivity" and confidence is not None
    g = _checked_groups(groups, y) if spread else None
    codes = np.asarray(dx, dtype=object) if targets else None
    lowered: list[str] = []
    spread_lowered = False
    if policy == "fixed":
        t = DEFAULT_THRESHOLD
    else:
        if not two_classes(y):
            raise ValueError(f"choose_threshold(policy={policy!r}) needs both classes in y_true")
        t = _policy_threshold(y, p, policy, target_sensitivity, confidence)
        t, lowered = _lowered_for_diagnoses(t, y, p, codes, targets, confidence)
        if g is not None:
            t, spread_lowered = _lowered_for_spread(t, y, p, g, codes, target_sensitivity, targets, confidence)
        t = float(np.clip(t, *THRESHOLD_CLIP))
    out = _choice(y, p, t, policy, target_sensitivity, confidence, codes, targets, lowered)
    if g is not None:
        out["fold_spread"] = _fold_spread(y, p, g, t, float(confidence), codes, targets, spread_lowered)
    return out


def _checked_targets(y: np.ndarray, policy: str, target_sensitivity: float | None, confidence: float | None,
                     dx: ArrayLike | None, diagnosis_targets: dict[str, float] | None) -> dict[str, float]:
    """The request checked before any work is done; the per-diagnosis targets to meet (none under the fixed policy,
    which lowers nothing)."""
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"policy must be one of {THRESHOLD_POLICIES}, got {policy!r}")
    if policy == "sensitivity":
        if target_sensitivity is None or not (0.0 < float(target_sensitivity) <= 1.0):
            raise ValueError(f"policy 'sensitivity' needs target_sensitivity in (0, 1], got {target_sensitivity!r}")
    if confidence is not None and not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    targets = dict(diagnosis_targets or {})
    if not targets or policy == "fixed":
        return {}
    if dx is None or len(dx) != len(y):
        raise ValueError("diagnosis_targets need one diagnosis per row in dx")
    for name, target in targets.items():
        if not (0.0 < float(target) <= 1.0):
            raise ValueError(f"diagnosis target for {name!r} must be in (0, 1], got {target!r}")
    return targets


def _checked_groups(groups: ArrayLike, y: np.ndarray) -> np.ndarray:
    g = np.asarray(groups)
    if g.shape != y.shape or len(np.unique(g)) < 2:
        raise ValueError("groups need one group per row and at least two groups")
    return g


def _policy_threshold(y: np.ndarray, p: np.ndarray, policy: str, target_sensitivity: float | None,
                      confidence: float | None) -> float:
    """The policy's own threshold, before any diagnosis or the folds' spread lowers it."""
    if policy == "youden":
        fpr, tpr, thr = sklearn_metrics().roc_curve(y, p, pos_label=1, drop_intermediate=False)
        return float(thr[int(np.argmax(tpr - fpr))])  # first maximum = highest threshold among ties
    return threshold_catching(p[y == 1], float(target_sensitivity), confidence)[0]


def _lowered_for_diagnoses(t: float, y: np.ndarray, p: np.ndarray, codes: np.ndarray | None,
                           targets: dict[str, float], confidence: float | None) -> tuple[float, list[str]]:
    """(threshold, the diagnoses that lowered it): every target is met by any threshold below its own highest one,
    so the joint answer is the lowest of them."""
    lowered: list[str] = []
    for name, target in targets.items():
        scores = p[(codes == name) & (y == 1)]
        if len(scores):
            own, _ = threshold_catching(scores, float(target), confidence)
            if own < t:
                t, lowered = own, [*lowered, name]
    return t, lowered


def _lowered_for_spread(t: float, y: np.ndarray, p: np.ndarray, g: np.ndarray, codes: np.ndarray | None,
                        target_sensitivity: float | None, targets: dict[str, float], confidence: float | None
                        ) -> tuple[float, bool]:
    """(threshold, whether it was lowered) so that :func:`spread_bound` over the folds reaches the overall target and
    each diagnosis' own."""
    masks = [y == 1] + [(codes == name) & (y == 1) for name in targets]
    goals = [float(target_sensitivity)] + [float(v) for v in targets.values()]
    lowered = False
    for mask, goal in zip(masks, goals):
        own = threshold_across_groups(p[mask], g[mask], goal, float(confidence)) if mask.any() else None
        if own is not None and own < t:
            t, lowered = own, True
    return t, lowered


def _choice(y: np.ndarray, p: np.ndarray, t: float, policy: str, target_sensitivity: float | None,
            confidence: float | None, codes: np.ndarray | None, targets: dict[str, float], lowered: list[str]
            ) -> dict[str, Any]:
    """What the threshold gives on the validation split: the fields of :class:`ThresholdChoice`."""
    tm = threshold_metrics(y, p, t)
    out: dict[str, Any] = {
        "threshold": t,
        "policy": policy,
        "target_sensitivity": None if target_sensitivity is None else float(target_sensitivity),
        "sensitivity": tm["sensitivity"],
        "specificity": tm["specificity"],
    }
    if confidence is not None and policy == "sensitivity":
        n_pos = int(y.sum())
        bound = float(sensitivity_lower_bound(round(tm["sensitivity"] * n_pos), n_pos, float(confidence)))
        out.update(confidence=float(confidence), sensitivity_lower_bound=bound,
                   target_met=bool(bound >= float(target_sensitivity) - ROC_TOL))
    if targets:
        out.update(diagnoses={name: _diagnosis_sensitivity(p[y == 1], codes[y == 1], name, float(target), t,
                                                           confidence) for name, target in targets.items()},
                   lowered_for=lowered)
    return out


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


def _fold_spread(y: np.ndarray, p: np.ndarray, groups: np.ndarray, t: float, confidence: float,
                 codes: np.ndarray | None, targets: dict[str, float], lowered: bool) -> FoldSpread | None:
    def at_t(mask: np.ndarray) -> tuple[list[float], float, float] | None:
        caught, n = caught_per_group(p[mask], groups[mask], np.array([t]))
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
