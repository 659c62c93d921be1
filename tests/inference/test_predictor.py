"""The predictor: flips near the threshold on a trained model, and what a scoring actor imports."""

import os

import numpy as np
import pytest

from skinray.inference.predictor import ImagePredictor
from skinray.model.artifact import ModelArtifact

pytestmark = pytest.mark.slow


def test_a_trained_model_flips_only_near_its_threshold(model_dir, sample, tmp_path):
    """The session model was trained with the default flip TTA: its band was fitted on validation, and scoring gives
    images inside it the three-view score and the others the one-view score."""
    import json
    import shutil

    from skinray.config import InferenceConfig

    art = ModelArtifact.open(model_dir)
    assert art.meta.tta and art.meta.tta_band is not None and art.meta.tta_band >= 0
    check = art.meta.validation["views"]
    assert check["decisions_changed"] == 0 and 1.0 <= check["views_per_image"] <= 3.0
    uris = [f"{sample['local']}/images/{n}" for n in sorted(os.listdir(f"{sample['local']}/images"))[:40]]
    one, _ = ImagePredictor(model_dir, inference=InferenceConfig(tta=False)).score_uris(uris)
    every, _ = ImagePredictor(model_dir, inference=InferenceConfig(tta=True)).score_uris(uris)
    ok = one["error"].isna().to_numpy()
    # a band through the middle of these images' scores, so that both sides are exercised
    wide = tmp_path / "banded"
    shutil.copytree(model_dir, wide)
    meta = json.loads((wide / "skinray.json").read_text())
    center = art.operating_point.raw_threshold
    cal = art.meta.calibration  # the calibrated one-view logits back to the engine's raw logits
    raw = (one.loc[ok, "logit_malignant"].to_numpy() - cal.bias) * cal.temperature
    d = np.sort(np.abs(raw - center))
    k = int(np.argmax(np.diff(d)))  # the band's edge in the widest gap: no image near it (a tiny model ties logits)
    meta["tta_band"] = float(d[k] + d[k + 1]) / 2
    (wide / "skinray.json").write_text(json.dumps(meta))
    near, _ = ImagePredictor(str(wide)).score_uris(uris)
    inside = np.abs(raw - center) <= meta["tta_band"]
    assert 0 < inside.sum() < len(raw)
    got, n_views = near.loc[ok, "prob_malignant"].to_numpy(), near.loc[ok, "_views"].to_numpy()
    assert np.array_equal(n_views, np.where(inside, 3, 1)) and (near.loc[~ok, "_views"] == 0).all()
    assert np.max(np.abs(got[inside] - every.loc[ok, "prob_malignant"].to_numpy()[inside])) < 1e-5
    assert np.max(np.abs(got[~inside] - one.loc[ok, "prob_malignant"].to_numpy()[~inside])) < 1e-5


def test_a_scoring_actor_imports_neither_scikit_learn_nor_tensorflow():
    """What an actor imports is what it pays before its first batch: scikit-learn (with scipy.stats) cost each actor
    about 0.9 s of CPU, TensorFlow more, and scoring needs neither (metrics import them on first use)."""
    import subprocess
    import sys

    code = ("import sys, skinray.inference.predictor, skinray.inference.plan; "
            "print(sorted(m for m in ('sklearn', 'tensorflow', 'keras', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
