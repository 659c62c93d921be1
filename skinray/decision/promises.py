"""What a model promises, measured on labelled images with intervals, and held or not.

A model directory promises figures at its stored threshold: the sensitivity its threshold was chosen to keep (with
confidence), the per-diagnosis floors (melanoma), and what its held-out validation showed for specificity, ROC-AUC
and calibration. ``evaluate`` reports the same figures per source; ``skinray validate`` measures them on a clinic's
own labelled images and marks each promise held, not held (the whole interval misses it) or inconclusive (the point
misses it but the interval, from too few images, still covers it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from skinray.decision import inputs, intervals, metrics

MELANOMA = "mel"  # the diagnosis code of melanoma (HAM10000's; ISIC names are mapped to it by skinray.data.schema)
ECE_FLOOR = 0.05  # a calibration promise is never tighter than this: ECE of a few hundred images is biased upward
ECE_BOOT = 200


def _ci(k: int, n: int) -> list[float] | None:
    return intervals.proportion_ci(k, n)


def _ece_ci(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    draws = [metrics.expected_calibration_error(y[i], p[i]) for i in rng.integers(0, len(y), (n_boot, len(y)))]
    return [float(v) for v in np.quantile(draws, [0.025, 0.975])]


def figures(y_true: Any, prob: Any, threshold: float, dx: Any = None, n_boot: int = 1000, seed: int = 0
            ) -> dict[str, Any]:
    """ROC-AUC and ECE with bootstrap intervals; sensitivity, melanoma sensitivity and specificity at ``threshold``
    with exact intervals. A figure that needs a class the images lack is None."""
    y, p = inputs.validate(y_true, prob)
    t = inputs.check_threshold(threshold)
    flagged = p >= t
    pos, neg = y == 1, y == 0
    codes = np.array([d if isinstance(d, str) else "" for d in dx] if dx is not None else [""] * len(y), object)
    mel = pos & (codes == MELANOMA)
    both = inputs.two_classes(y)
    out: dict[str, Any] = {"n": int(len(y)), "n_pos": int(pos.sum()), "n_melanoma": int(mel.sum()),
                           "threshold": t}
    out["roc_auc"] = float(inputs.sklearn_metrics().roc_auc_score(y, p)) if both else None
    out["roc_auc_ci95"] = list(intervals.bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed)) if both and n_boot else None
    out["ece"] = metrics.expected_calibration_error(y, p) if len(y) else None
    out["ece_ci95"] = _ece_ci(y, p, min(n_boot, ECE_BOOT), seed) if len(y) and n_boot else None
    for name, mask, hit in (("sensitivity", pos, flagged), ("melanoma_sensitivity", mel, flagged),
                            ("specificity", neg, ~flagged)):
        k, n = int((hit & mask).sum()), int(mask.sum())
        out[name] = k / n if n else None
        out[f"{name}_ci95"] = _ci(k, n)
    return out


def by_source(rows: pd.DataFrame, threshold: float, n_boot: int) -> dict[str, dict[str, Any]]:
    """:func:`figures` for each ``source`` of scored rows (``label``, ``prob_malignant``, ``dx``)."""
    if "source" not in rows or rows.empty:
        return {}
    out = {}
    for name, part in rows.groupby(rows["source"].astype("string").fillna("unknown"), sort=True):
        dx = part["dx"].astype("string").str.strip().str.lower().fillna("").to_numpy(object) if "dx" in part else None
        out[str(name)] = figures(part["label"].to_numpy(int), part["prob_malignant"].to_numpy(float), threshold,
                                 dx, n_boot)
    return out


@dataclass(frozen=True)
class Promise:
    """One promised figure against its measurement."""

    name: str
    promised: float
    direction: str  # "at least" | "at most"
    source: str  # where the promise comes from, in words
    measured: float | None = None
    ci95: list[float] | None = None
    status: str = "not measured"  # held | not held | inconclusive | not measured

    def measure(self, fig: dict[str, Any]) -> Promise:
        value, ci = fig.get(self.name), fig.get(f"{self.name}_ci95")
        if value is None:
            return self
        at_least = self.direction == "at least"
        if (value >= self.promised) if at_least else (value <= self.promised):
            status = "held"
        elif ci and ((ci[1] < self.promised) if at_least else (ci[0] > self.promised)):
            status = "not held"
        else:
            status = "inconclusive"
        return Promise(self.name, self.promised, self.direction, self.source, float(value), ci, status)

    def describe(self) -> str:
        shown = "n/a" if self.measured is None else f"{self.measured:.3f}"
        ci = f" [{self.ci95[0]:.3f}, {self.ci95[1]:.3f}]" if self.ci95 else ""
        return f"{self.name} {shown}{ci} ({self.direction} {self.promised:.3f}, {self.source}): {self.status}"

    def record(self) -> dict[str, Any]:
        return asdict(self)


def promised(meta: Any) -> list[Promise]:
    """The promises a model directory (:class:`skinray.model.artifact.ModelMeta`) makes at its stored threshold."""
    thr, val = meta.threshold, meta.validation or {}
    out = []
    if thr.policy == "sensitivity" and thr.target_sensitivity is not None:
        how = "the threshold's target" + (f" at {thr.confidence:.0%} confidence" if thr.confidence else "")
        out.append(Promise("sensitivity", thr.target_sensitivity, "at least", how))
    elif thr.sensitivity is not None:
        out.append(Promise("sensitivity", thr.sensitivity, "at least", "held-out validation"))
    floor = (thr.diagnoses or {}).get(MELANOMA)
    if floor is not None:
        out.append(Promise("melanoma_sensitivity", floor.target, "at least", "the threshold's melanoma floor"))
    cm = (val.get("at_threshold") or {}).get("confusion")
    if cm and cm["tn"] + cm["fp"]:
        low = intervals.proportion_ci(cm["tn"], cm["tn"] + cm["fp"])[0]
        out.append(Promise("specificity", low, "at least", "lower 95% bound on held-out validation"))
    auc_ci = val.get("roc_auc_ci95")
    if auc_ci:
        out.append(Promise("roc_auc", auc_ci[0], "at least", "lower 95% bound on held-out validation"))
    ece = (val.get("ranking") or {}).get("ece")
    if ece is not None:
        out.append(Promise("ece", max(float(ece), ECE_FLOOR), "at most",
                           f"held-out validation {float(ece):.3f}, never below {ECE_FLOOR}"))
    return out


def verdict(checked: list[Promise]) -> str:
    """One line: which promises held on these images, and what to do when one did not."""
    counts = {s: sum(p.status == s for p in checked) for s in ("held", "not held", "inconclusive", "not measured")}
    text = f"{counts['held']} of {len(checked)} promises held"
    if counts["not held"]:
        failed = ", ".join(p.name for p in checked if p.status == "not held")
        return (f"{text}; NOT HELD: {failed}. Do not rely on this model's stored threshold for these images: refit it "
                "on them with `skinray calibrate`, or fine-tune with `skinray train --init-model`")
    if counts["inconclusive"]:
        return (f"{text}, {counts['inconclusive']} inconclusive (too few images to tell): label more images, "
                "especially malignant ones, before relying on it")
    return text + (f" ({counts['not measured']} not measured)" if counts["not measured"] else "")
