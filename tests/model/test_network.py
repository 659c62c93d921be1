"""skinray.model.network: the diagnosis-target network's binary readout, in Keras, in model.keras and in the ONNX graph."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.special import logsumexp

from skinray import SkinrayError
from skinray.model.network import build_model, export_onnx, forward, malignant_readout_layer

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


def _members(n: int, dx_classes: int = 7, malignant_dx: list[bool] | None = None) -> list:
    import keras

    members = []
    for i in range(n):
        keras.utils.set_random_seed(10 + i)
        m = build_model(32, alpha=0.35, weights=None, dx_classes=dx_classes, malignant_dx=malignant_dx,
                        name=f"member_{i + 1}")
        for layer in ("logit", "dx_logits"):  # untrained heads output ~0: give each member its own spread
            if not isinstance(m.get_layer(layer), malignant_readout_layer()):
                kernel, bias = m.get_layer(layer).get_weights()
                shift = np.random.default_rng(i).normal(0, 2, bias.shape).astype(np.float32)
                m.get_layer(layer).set_weights([kernel * 1e4 * (i + 1), bias + shift])
        members.append(m)
    return members


@pytest.mark.parametrize("malignant_dx", [None, MALIGNANT])
def test_ensemble_outputs_the_members_mean_logits_in_keras_model_keras_and_onnx(tmp_path, malignant_dx) -> None:
    """One graph for k fold models: logit and dx_logits are the members' means, loaded back in safe mode and
    exported to ONNX within the parity limit; its members are found again for Grad-CAM."""
    from skinray.inference.engines import OnnxEngine
    from skinray.model.artifact import ONNX_PARITY_LIMIT
    from skinray.model.network import build_ensemble, load_keras, members_of

    members = _members(2, malignant_dx=malignant_dx)
    ensemble = build_ensemble(members)
    x = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    each = [forward(m, x) for m in members]
    out = forward(ensemble, x)
    for key in ("logit", "dx_logits"):
        np.testing.assert_allclose(out[key], np.mean([e[key] for e in each], axis=0), rtol=1e-5, atol=1e-5)
    assert np.std([e["logit"] for e in each], axis=0).min() > 1e-3  # the members really differ
    assert [m.name for m in members_of(ensemble)] == ["member_1", "member_2"]
    assert members_of(members[0]) == [members[0]]

    ensemble.save(str(tmp_path / "model.keras"))
    again = load_keras(str(tmp_path / "model.keras"))
    np.testing.assert_allclose(forward(again, x)["logit"], out["logit"], rtol=1e-5, atol=1e-5)
    assert len(members_of(again)) == 2
    names, parity = export_onnx(ensemble, str(tmp_path / "model.onnx"), 32, samples=x)
    assert parity <= ONNX_PARITY_LIMIT * max(1.0, float(np.abs(out["logit"]).max()) / 100)
    onnx = OnnxEngine(str(tmp_path / "model.onnx"), names, policy="batch").run(x)
    np.testing.assert_allclose(onnx["logit"].reshape(-1), out["logit"], rtol=1e-4, atol=1e-3)


def test_an_ensemble_needs_two_members_with_the_same_outputs() -> None:
    from skinray.model.network import build_ensemble

    one = _members(1)
    with pytest.raises(SkinrayError, match="at least two members"):
        build_ensemble(one)
    other = build_model(32, alpha=0.35, weights=None, dx_classes=0, name="member_2")
    with pytest.raises(SkinrayError, match="same outputs"):
        build_ensemble([one[0], other])
