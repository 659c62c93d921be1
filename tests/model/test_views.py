"""Flip views: one view, flips for every image, flips only near the threshold (the band fitted on validation)."""

import numpy as np
import pytest

from skinray.decision.calibration import Calibration
from skinray.decision.operating_point import OperatingPoint, ThresholdChoice
from skinray.model import views
from skinray.model.network import DX_LOGITS, LOGIT
from skinray.model.views import VIEWS, Views


class LinearEngine:
    """A stand-in engine whose logits change under a flip (fixed random weights over the pixels)."""

    def __init__(self, size: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(size, size, 3))
        self.wd = rng.normal(size=(4, size, size, 3))
        self.calls: list[tuple[int, int]] = []

    def run(self, x: np.ndarray, group: int = 1, follow_up: bool = False) -> dict[str, np.ndarray]:
        self.calls.append((len(x), group, follow_up))
        x = np.asarray(x, np.float32)
        return {LOGIT: np.einsum("nhwc,hwc->n", x, self.w).astype(np.float32) / 50.0,
                DX_LOGITS: np.einsum("nhwc,khwc->nk", x, self.wd).astype(np.float32) / 50.0}


def _x(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 3)).astype(np.float32)


def _op(threshold: float = 0.4, temperature: float = 1.7, bias: float = -0.6) -> OperatingPoint:
    return OperatingPoint(Calibration(method="platt", temperature=temperature, bias=bias),
                          ThresholdChoice(threshold=threshold, policy="sensitivity"))


def _three_calls(engine: LinearEngine, x: np.ndarray) -> dict[str, np.ndarray]:
    outs = [engine.run(np.ascontiguousarray(v)) for v in views.flips(x)]
    return {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0]}


def test_raw_threshold_is_the_threshold_before_calibration():
    for t, temp, bias in [(0.4, 1.7, -0.6), (0.05, 0.8, 1.2), (0.5, 1.0, 0.0)]:
        op = _op(t, temp, bias)
        assert op.apply([op.raw_threshold]).prob[0] == pytest.approx(t, abs=1e-12)
    assert _op(threshold=0.0).raw_threshold == -np.inf and _op(threshold=1.0).raw_threshold == np.inf


def test_near_threshold_scores_three_views_inside_the_band_and_one_outside():
    engine, x = LinearEngine(), _x(64)
    one, every = engine.run(x), _three_calls(engine, x)
    center = float(np.median(one[LOGIT]))
    band = float(np.quantile(np.abs(one[LOGIT] - center), 0.4))
    engine.calls.clear()
    out = views.run(engine, x, Views(tta=True, band=band, center=center))
    near = np.abs(one[LOGIT] - center) <= band
    assert 0 < near.sum() < len(x)  # the case covers both sides of the band
    assert np.array_equal(out[VIEWS], np.where(near, 3, 1))
    for key in (LOGIT, DX_LOGITS):
        assert np.max(np.abs(out[key][near] - every[key][near])) < 1e-5, key
        assert np.array_equal(out[key][~near], one[key][~near]), key
    # one call for the first view of every image, one for the two flips of the images inside the band
    assert engine.calls == [(64, 1, False), (2 * int(near.sum()), 2, True)]


def test_the_band_reaches_no_image_when_none_is_near_and_the_threshold_is_infinite():
    engine, x = LinearEngine(), _x(16)
    engine.calls.clear()
    out = views.run(engine, x, Views(tta=True, band=1.0, center=-np.inf))
    assert (out[VIEWS] == 1).all() and engine.calls == [(16, 1, False)]


def test_one_view_and_every_image_modes():
    engine, x = LinearEngine(), _x(9)
    single = views.run(engine, x, Views())
    assert (single[VIEWS] == 1).all() and np.array_equal(single[LOGIT], engine.run(x)[LOGIT])
    every = views.run(engine, x, Views(tta=True))
    assert (every[VIEWS] == 3).all()
    assert np.max(np.abs(every[LOGIT] - _three_calls(engine, x)[LOGIT])) < 1e-5


def test_combine_on_per_view_logits_is_what_run_scores():
    engine, x = LinearEngine(seed=4), _x(40, seed=5)
    z = views.all_views(engine, x)[LOGIT]
    assert z.shape == (40, 3)
    center = float(np.median(z[:, 0]))
    band = float(np.quantile(np.abs(z[:, 0] - center), 0.5))
    for v in (Views(), Views(tta=True), Views(tta=True, band=band, center=center)):
        assert np.max(np.abs(views.combine(z, v) - views.run(engine, x, v)[LOGIT])) < 1e-5, v


def test_the_fitted_band_keeps_every_decision_of_every_view_whatever_the_threshold():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(5, 200))
        z1 = rng.normal(0, 3, n)
        z = np.stack([z1, z1 + rng.normal(0, rng.uniform(0.01, 1.5), n), z1 + rng.normal(0, 0.3, n)], axis=1)
        band = views.fit_band(z)
        center = float(rng.choice(z.mean(axis=1))) if trial % 2 else float(rng.normal(0, 3))
        every = views.combine(z, Views(tta=True)) >= center
        near = views.combine(z, Views(tta=True, band=band, center=center)) >= center
        assert np.array_equal(every, near), trial


def test_fit_band_refuses_what_is_not_per_view_logits():
    for bad in (np.zeros((0, 3)), np.zeros((4, 2)), np.array([[0.0, np.nan, 1.0]])):
        with pytest.raises(ValueError):
            views.fit_band(bad)


def test_check_reports_cost_and_what_changes():
    rng = np.random.default_rng(3)
    y = (rng.uniform(size=500) < 0.3).astype(int)
    z1 = rng.normal(0, 1, 500) + 2.0 * y
    z = np.stack([z1, z1 + rng.normal(0, 0.2, 500), z1 + rng.normal(0, 0.2, 500)], axis=1)
    op = _op(threshold=0.3, temperature=1.0, bias=0.0)
    band = views.fit_band(z)
    report = views.check(y, z, op, band)
    assert report["decisions_changed"] == 0 and report["images"] == 500
    share = np.mean(np.abs(z[:, 0] - op.raw_threshold) <= band)
    assert report["share_with_flips"] == pytest.approx(share, abs=1e-4)
    assert report["views_per_image"] == pytest.approx(1 + 2 * share, abs=1e-3)
    assert 0 < report["max_abs_prob_change"] < 0.2
    assert all(0.5 < report[k] <= 1 for k in ("roc_auc_one_view", "roc_auc_all_views", "roc_auc_near_threshold"))
    narrow = views.check(y, z, op, band / 10)  # a band narrower than the flips' shifts can change decisions
    assert narrow["views_per_image"] < report["views_per_image"]


def test_for_model_follows_the_model_unless_overridden():
    op = _op()
    assert views.for_model(True, 0.8, op) == Views(tta=True, band=0.8, center=op.raw_threshold)
    assert views.for_model(True, None, op) == Views(tta=True)
    assert views.for_model(False, 0.8, op) == Views()
    assert views.for_model(True, 0.8, op, override=True) == Views(tta=True)  # flips for every image
    assert views.for_model(True, 0.8, op, override=False) == Views()
    assert views.for_model(False, None, op, override=True) == Views(tta=True)
    assert Views(tta=True, band=0.8).record() == {"tta": True, "tta_band": 0.8}
    assert Views(band=0.8).record() == {"tta": False, "tta_band": None}
    assert "±0.800" in Views(tta=True, band=0.8).describe() and Views().describe() == "one view"
