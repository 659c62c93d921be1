"""Which views an image is scored on, and how they combine: one view, or flip TTA (the image and its horizontal and
vertical flips, logits averaged), for every image or only for images near the threshold.

Flip TTA bought +0.003-0.004 validation ROC-AUC for three forward passes, and on a CPU the passes are the whole
cost. A flip can change a decision only where the one-view logit lies near the threshold, by less than the flips
move a score. Training measures that shift on the validation split and stores the largest as ``tta_band`` in
``skinray.json``: an image whose one-view logit lies farther from the threshold than that keeps its one-view
score (no validation decision would have changed), and the images inside the band get all three views. The
operating point stays fitted on every validation image's three views; :func:`check` records what the band changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np

from skinray.decision import inputs, metrics
from skinray.decision.operating_point import OperatingPoint
from skinray.model.network import LOGIT
from skinray.model.ood import FEATURES

VIEWS = "views"  # run()'s extra output: how many views each image's scores average (1 or 3)
BAND_MARGIN = 1e-5  # the band's headroom for engine rounding (batched vs per-image logits differ by ~1e-6)


class Engine(Protocol):
    def run(self, x: np.ndarray, group: int = 1, follow_up: bool = False) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Views:
    """One view, flip TTA for every image (``band`` None), or flip TTA within ``band`` raw logits of ``center``."""

    tta: bool = False
    band: float | None = None
    center: float = 0.0  # the threshold as a raw logit (OperatingPoint.raw_threshold)

    def record(self) -> dict[str, Any]:
        """What run.json and metrics.json say about the views."""
        return {"tta": self.tta, "tta_band": self.band if self.tta else None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Views:
        """The views a run.json or metrics.json says were used (the centre is not recorded: for describing only)."""
        return cls(tta=bool(record.get("tta")), band=record.get("tta_band"))

    def near(self, first: np.ndarray) -> np.ndarray:
        """Which images get the flips, from their one-view logits: all of them without a band, none without TTA."""
        first = np.asarray(first, np.float64)
        if not self.tta or self.band is None:
            return np.full(first.shape, self.tta)
        return np.abs(first - self.center) <= self.band

    def describe(self, views_per_image: float | None = None) -> str:
        """In words, for reports and review pages; with the views per image that a run measured."""
        if not self.tta:
            return "one view"
        if self.band is None:
            return "flip TTA (3 views for every image)"
        measured = "" if views_per_image is None else f" ({views_per_image:.2f} views per image)"
        return f"flip TTA within ±{self.band:.3f} logits of the threshold{measured}, one view elsewhere"


def per_image(counts: Mapping[Any, int]) -> float | None:
    """Mean views per scored row from rows counted by views (key 0: not scored), as run.json records them."""
    by_views = {int(k): int(v) for k, v in counts.items() if int(k) > 0}
    scored = sum(by_views.values())
    return round(sum(k * v for k, v in by_views.items()) / scored, 4) if scored else None


def for_model(tta: bool, band: float | None, op: OperatingPoint, override: bool | None = None) -> Views:
    """The views a model scores with: as it was fitted (``override`` None), flips for every image (True) or one
    view (False)."""
    if override is False or (override is None and not tta):
        return Views()
    if override is True or band is None:
        return Views(tta=True)
    return Views(tta=True, band=float(band), center=op.raw_threshold)


def flips(x: np.ndarray) -> list[np.ndarray]:
    """The views of a batch (N×H×W×C): the images, their horizontal and their vertical flips."""
    return [x, x[:, :, ::-1, :], x[:, ::-1, :, :]]


def _stacked(parts: list[np.ndarray]) -> np.ndarray:
    """The views of each image next to each other: one engine call scores them all (per image or batched)."""
    n = len(parts[0])
    return np.stack(parts, axis=1).reshape((len(parts) * n,) + parts[0].shape[1:])


def all_views(engine: Engine, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of every view: arrays shaped (N, 3, ...), one engine call."""
    out = engine.run(_stacked(flips(x)), group=3)
    return {k: v.reshape((len(x), 3) + v.shape[1:]) for k, v in out.items()}


def run(engine: Engine, x: np.ndarray, views: Views) -> dict[str, np.ndarray]:
    """The engine's outputs for ``x`` under ``views`` (views' logits averaged), plus :data:`VIEWS` per image."""
    if not views.tta:
        out = engine.run(x)
        return {**out, VIEWS: np.ones(len(x), np.int8)}
    if views.band is None:
        out = {k: v[:, 0] if k == FEATURES else v.mean(axis=1) for k, v in all_views(engine, x).items()}
        return {**out, VIEWS: np.full(len(x), 3, np.int8)}
    out = {k: np.array(v, copy=True) for k, v in engine.run(x).items()}
    near = views.near(out[LOGIT])
    if near.any():
        first = {k: v[near] for k, v in out.items()}
        xs = x[near]
        more = engine.run(_stacked(flips(xs)[1:]), group=2, follow_up=True)
        for k, v in more.items():
            if k == FEATURES:  # the guard reads the image as it is, whatever views its logit averages
                continue
            v = v.reshape((len(xs), 2) + v.shape[1:])
            out[k][near] = (first[k] + v[:, 0] + v[:, 1]) / 3.0
    return {**out, VIEWS: np.where(near, 3, 1).astype(np.int8)}


def combine(z_views: np.ndarray, views: Views) -> np.ndarray:
    """What :func:`run` gives for logits already computed per view ((N, 3): the image, its two flips)."""
    z = np.asarray(z_views, np.float64)
    return np.where(views.near(z[:, 0]), z.mean(axis=1), z[:, 0])


def fit_band(z_views: np.ndarray) -> float:
    """The largest shift the flips gave any image's logit: outside that distance from the threshold, one view's
    decision is the three views' decision for every image it was fitted on."""
    z = np.asarray(z_views, np.float64)
    if z.ndim != 2 or z.shape[1] != 3 or not len(z) or not np.isfinite(z).all():
        raise ValueError(f"fit_band needs finite (N, 3) per-view logits, got shape {z.shape}")
    shift = float(np.max(np.abs(z.mean(axis=1) - z[:, 0])))
    return shift * (1 + BAND_MARGIN) + BAND_MARGIN  # scoring's one-view logits may differ from these by rounding


def check(y: np.ndarray, z_views: np.ndarray, op: OperatingPoint, band: float) -> dict[str, Any]:
    """What scoring within ``band`` changes against three views for every image, on labelled per-view logits."""
    banded = Views(tta=True, band=band, center=op.raw_threshold)
    one, every, near = (op.apply(combine(z_views, v)) for v in (Views(), Views(tta=True), banded))
    share = float(np.mean(banded.near(np.asarray(z_views, np.float64)[:, 0])))
    y = np.asarray(y, int)
    both = inputs.two_classes(y)

    def auc(s: Any) -> float | None:
        return round(metrics.ranking_metrics(y, s.prob)["roc_auc"], 5) if both else None

    return {
        "images": int(len(y)), "band": band, "share_with_flips": round(share, 4),
        "views_per_image": round(1.0 + 2.0 * share, 4),
        "roc_auc_one_view": auc(one), "roc_auc_all_views": auc(every), "roc_auc_near_threshold": auc(near),
        "decisions_changed": int(np.sum(every.malignant != near.malignant)),
        "max_abs_prob_change": float(np.max(np.abs(every.prob - near.prob))) if len(y) else None,
    }
