"""The out-of-distribution guard: is an image like the dermoscopy the model was trained on?

The exported graph has a third output, ``features``: the pooled MobileNetV2 features the head reads (one engine call
gives the prediction and the features). At the end of training, class-conditional Gaussians with one shared
covariance are fitted to the training split's features; an image's score is its squared Mahalanobis distance to the
nearer class mean. The threshold keeps ``keep`` (95%) of the held-out validation images. Chosen on evidence
(bench/bench_sources.py, bench/RESULTS.md): on a fine-tuned model's features it ranked natural photographs,
documents, solid colours, noise and blurred or over-exposed dermoscopy at AUROC 0.97-1.00, where the energy of the
logits managed 0.65-0.99, and it flagged other sources' real dermoscopy about as often as the model's own test
images; it costs two matrix products per image (26 µs).

Owned file of the model directory: ``ood.npz`` (the two class means and the whitening matrix, float32, no pickles),
hashed in ``skinray.json`` like every file; its description (:class:`OodGuard`) lives in ``skinray.json``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from skinray import SkinrayError

if TYPE_CHECKING:
    import pandas as pd

FILE = "ood.npz"
FEATURES = "features"
KEEP = 0.95
SHRINKAGE = 1e-3  # added to the covariance's diagonal, relative to its mean variance: a full-rank inverse always
REVIEW_TEXT = "not like the training images: review the image"


class OodGuard(BaseModel):
    """``skinray.json`` ``ood``: how the guard was fitted and where its threshold sits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["mahalanobis"] = "mahalanobis"
    file: Literal["ood.npz"] = FILE
    output: str  # the graph's features output
    dims: int = Field(ge=1)
    threshold: float = Field(gt=0, allow_inf_nan=False)  # scores above it are out of distribution
    keep: float = Field(gt=0, lt=1)  # the share of held-out validation images the threshold keeps
    fitted_on: str
    fitted_rows: int = Field(ge=2)
    validation_flagged: float | None = Field(None, ge=0, le=1)


@dataclass(frozen=True)
class Stats:
    """Class means (2, D) and the whitening matrix W (D, D): score = min_c ||(f - mean_c) W||²."""

    means: np.ndarray
    whiten: np.ndarray

    def score(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, np.float32).reshape(len(features), -1)
        if f.shape[1] != self.whiten.shape[0]:
            raise SkinrayError(f"features have {f.shape[1]} dimensions, the guard {self.whiten.shape[0]}")
        projected = f @ self.whiten  # (N, D)
        centres = self.means @ self.whiten  # (2, D)
        d = ((projected[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        return d.min(axis=1).astype(np.float64)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, means=self.means.astype(np.float32), whiten=self.whiten.astype(np.float32))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, dims: int) -> Stats:
        """Read ``ood.npz`` without pickles, holding it to the shapes ``skinray.json`` records."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                means, whiten = np.asarray(z["means"], np.float32), np.asarray(z["whiten"], np.float32)
        except Exception as exc:  # a damaged or foreign file
            raise SkinrayError(f"{FILE} cannot be read as the guard's statistics: {exc}") from exc
        if means.shape != (2, dims) or whiten.shape != (dims, dims):
            raise SkinrayError(f"{FILE} holds means {means.shape} and whitening {whiten.shape}, not (2, {dims}) and "
                               f"({dims}, {dims})")
        if not (np.isfinite(means).all() and np.isfinite(whiten).all()):
            raise SkinrayError(f"{FILE} holds non-finite numbers")
        return cls(means, whiten)


def fit_stats(features: np.ndarray, labels: np.ndarray) -> Stats:
    """Class means and the shared covariance's whitening matrix (Cholesky factor of its inverse)."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    y = np.asarray(labels).astype(int)
    if len(f) < 2:
        raise SkinrayError("the guard needs at least two training images")
    means = np.stack([f[y == c].mean(axis=0) if (y == c).any() else f.mean(axis=0) for c in (0, 1)])
    centred = f - means[y]
    cov = centred.T @ centred / len(f)
    cov += np.eye(f.shape[1]) * SHRINKAGE * max(float(np.trace(cov)) / f.shape[1], 1e-12)
    precision = np.linalg.inv(cov)
    whiten = np.linalg.cholesky((precision + precision.T) / 2.0)  # precision = W Wᵀ
    return Stats(means.astype(np.float32), whiten.astype(np.float32))


def fit(train_features: np.ndarray, train_labels: np.ndarray, held_features: np.ndarray, output: str,
        held_name: str, keep: float = KEEP) -> tuple[Stats, OodGuard]:
    """The guard's statistics (training split) and its threshold (``keep`` of the held-out images)."""
    stats = fit_stats(train_features, train_labels)
    held = stats.score(held_features)
    threshold = float(np.quantile(held, keep)) if len(held) else float(np.quantile(stats.score(train_features), keep))
    threshold = max(threshold, np.finfo(np.float32).tiny)
    meta = OodGuard(output=output, dims=int(stats.whiten.shape[0]), threshold=threshold, keep=keep,
                    fitted_on=f"the training split's pooled features; threshold keeps {keep:.0%} of {held_name}",
                    fitted_rows=int(len(train_features)),
                    validation_flagged=float((held > threshold).mean()) if len(held) else None)
    return stats, meta


def describe(guard: OodGuard | None) -> str:
    """The guard in words for pages and reports (absent for models trained before it)."""
    if guard is None:
        return "absent (this model was trained before the out-of-distribution guard)"
    return (f"Mahalanobis distance of the pooled features to the training images, threshold {guard.threshold:.1f} "
            f"(keeps {guard.keep:.0%} of held-out validation images)")


HIGH_FACTOR = 3.0  # a run whose flagged share is this many times what validation showed says so
HIGH_MIN = 5  # ... and flags at least this many images


def summary(scored: pd.DataFrame, guard: OodGuard | None) -> dict[str, object]:
    """What a run's record says of the guard: how many scored images it flagged, against what was expected."""
    if guard is None or "out_of_distribution" not in scored:
        return {"guard": False}
    flagged = int(scored["out_of_distribution"].fillna(False).astype(bool).sum())
    n = int(len(scored))
    expected = guard.validation_flagged if guard.validation_flagged is not None else 1.0 - guard.keep
    share = flagged / n if n else 0.0
    return {"guard": True, "flagged": flagged, "scored": n, "share": round(share, 4),
            "expected_share": round(float(expected), 4), "threshold": guard.threshold,
            "high": bool(flagged >= HIGH_MIN and share >= HIGH_FACTOR * max(float(expected), 1e-3))}
