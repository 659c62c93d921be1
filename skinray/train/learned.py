"""Whether a trained network learned anything, judged on its held-out scores before any model is written.

Why: a from-scratch demo run once collapsed to constant outputs after epoch 8; its best epoch (validation AUC 0.527
on 120 images) was exported, calibrated and used to flag 1,451 of 1,494 images (issue 25). A network whose
held-out logits are constant, or whose held-out ROC-AUC is not above chance (0.5) at the configured confidence,
is not a model: :func:`judge` says what was seen, and training writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from skinray.decision import inputs, intervals

CHANCE = 0.5
N_BOOT = 2000
# logits that spread less than this, relative to their size, are one value (float32 noise around a dead network)
CONSTANT_RTOL = 1e-6


@dataclass(frozen=True)
class Judgement:
    """The held-out evidence: ROC-AUC and its interval (None without both classes), and what is wrong, if anything."""

    n: int
    n_pos: int
    auc: float | None
    ci: tuple[float, float] | None
    problem: str | None

    @property
    def dead(self) -> bool:
        return self.problem is not None

    def describe(self) -> str:
        """The figures in words: ``ROC-AUC 0.527 [0.412, 0.640] on 120 images (24 malignant)``."""
        auc = "n/a" if self.auc is None else f"{self.auc:.3f}"
        ci = "" if self.ci is None else f" [{self.ci[0]:.3f}, {self.ci[1]:.3f}]"
        return f"ROC-AUC {auc}{ci} on {self.n:,} images ({self.n_pos:,} malignant)"


def constant(logits: Any) -> bool:
    """Whether logits are one value up to float noise: a network that scores every image alike."""
    z = np.asarray(logits, dtype=np.float64)
    return bool(z.size) and float(z.max() - z.min()) <= CONSTANT_RTOL * max(1.0, float(np.abs(z).max()))


def judge(y_true: Any, logits: Any, confidence: float | None = 0.95, seed: int = 0) -> Judgement:
    """Held-out labels and logits (one column per view is averaged) → whether the network learned.

    Dead: a non-finite logit, logits that are one value, or (with ``confidence``) a two-sided ``confidence``
    percentile-bootstrap interval of the ROC-AUC whose lower end is at or below chance. Labels of one class leave
    the AUC unjudged (nothing to rank against); the constant check still applies. Deterministic for a ``seed``.
    """
    y = inputs.as_labels(y_true)
    z = np.asarray(logits, dtype=np.float64)
    z = z.mean(axis=1) if z.ndim == 2 else z.reshape(-1)
    if len(z) != len(y):
        raise ValueError(f"length mismatch: {len(y)} labels, {len(z)} logits")
    n, n_pos = int(len(y)), int(y.sum())
    if not np.isfinite(z).all():
        return Judgement(n, n_pos, None, None, f"{int((~np.isfinite(z)).sum()):,} of its {n:,} held-out outputs are "
                                               "not finite (the training diverged)")
    if constant(z):
        return Judgement(n, n_pos, CHANCE if inputs.two_classes(y) else None, None,
                         f"its outputs are constant: every one of the {n:,} held-out images scores "
                         f"logit {float(z.mean()):.4g} (a collapsed network)")
    if not inputs.two_classes(y):
        return Judgement(n, n_pos, None, None, None)
    _, rank = np.unique(z, return_inverse=True)  # AUC only ranks: dense ranks in [0, 1] never saturate like sigmoid
    score = rank / max(1, int(rank.max()))
    auc = float(inputs.sklearn_metrics().roc_auc_score(y, score))
    if confidence is None:
        return Judgement(n, n_pos, auc, None, None)
    ci = intervals.bootstrap_auc_ci(y, score, n_boot=N_BOOT, seed=seed, alpha=1.0 - confidence)
    judged = Judgement(n, n_pos, auc, ci, None)
    if ci[0] > CHANCE:
        return judged
    return Judgement(n, n_pos, auc, ci, f"it is not above chance: {judged.describe()}, the lower end of the "
                                        f"{confidence:.0%} interval at or below {CHANCE}")
