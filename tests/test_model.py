"""skinray.model: the diagnosis-target network's binary readout, in Keras, in model.keras and in the ONNX graph."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.special import logsumexp

from skinray import SkinrayError
from skinray.model import build_model, export_onnx, forward, malignant_readout_layer

MALIGNANT = [True, True, False, False, True, False, False]  # akiec bcc bkl df mel nv vasc


def _readout(dx_logits: np.ndarray) -> np.ndarray:
    mask = np.asarray(MALIGNANT)
    return logsumexp(dx_logits[:, mask], axis=1) - logsumexp(dx_logits[:, ~mask], axis=1)


def test_readout_is_the_log_odds_of_the_malignant_diagnoses_and_never_saturates() -> None:
    layer = malignant_readout_layer()(MALIGNANT)
    z = np.array([[0, 0, 0, 0, 0, 0, 0], [40, -40, 0, 0, 0, -60, 0], [-80, -80, 5, 0, -80, 90, 0],
                  [300, 0, -300, 0, 0, 0, 0]], np.float32)  # softmax would round these to exactly 0 or 1
    out = np.asarray(layer(z)).reshape(-1)
    np.testing.assert_allclose(out, _readout(z.astype(np.float64)), rtol=1e-5, atol=1e-4)
    assert out[0] == pytest.approx(np.log(3 / 4))
    assert len(set(out.round(3))) == len(out)  # distinct logits stay distinct at the extremes


def test_diagnosis_target_model_exports_the_readout(tmp_path) -> None:
    import keras

    keras.utils.set_random_seed(1)
    model = build_model(32, alpha=0.35, weights=None, dx_classes=7, malignant_dx=MALIGNANT)
    assert [layer.name for layer in model.layers if layer.name in ("logit", "dx_logits")] == ["dx_logits", "logit"]
    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    spread = float(np.std(forward(model, x)["dx_logits"], axis=0).mean())  # untrained: ~1e-10 apart; scale up
    kernel, bias = model.get_layer("dx_logits").get_weights()
    model.get_layer("dx_logits").set_weights([kernel / max(spread, 1e-30), bias])
    out = forward(model, x)
    np.testing.assert_allclose(out["logit"], _readout(out["dx_logits"].astype(np.float64)), rtol=1e-4, atol=1e-4)
    assert np.std(out["logit"]) > 1e-3
    path = str(tmp_path / "model.onnx")
    names, parity = export_onnx(model, path, 32, samples=x)
    assert set(names) == {"logit", "dx_logits"} and parity < 1e-3
    model.save(os.path.join(tmp_path, "model.keras"))
    again = keras.saving.load_model(os.path.join(tmp_path, "model.keras"), safe_mode=True, compile=False)
    np.testing.assert_allclose(forward(again, x)["logit"], out["logit"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("flags", [[True] * 7, [False] * 7, [True, False]])
def test_diagnosis_target_needs_both_kinds_of_diagnosis(flags) -> None:
    with pytest.raises(SkinrayError, match="benign and malignant diagnoses"):
        build_model(32, alpha=0.35, weights=None, dx_classes=7, malignant_dx=flags)
