"""The inference path: flip TTA in one engine call, the measured batch policy, and the int8 graph's bounds."""

import os

import numpy as np
import pytest

from skinray.artifact import ModelArtifact
from skinray.export import export
from skinray.inference import ImagePredictor, OnnxEngine, make_engine, run_views
from skinray.model import LOGIT

pytestmark = pytest.mark.slow


def _x(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def random_graph(tmp_path_factory):
    """An untrained network exported to ONNX: its logits differ from image to image (a trained tiny model's may not)."""
    import keras

    from skinray.model import build_model, export_onnx

    from skinray.model import forward

    keras.utils.set_random_seed(3)
    model = build_model(64, alpha=0.35, weights=None, dx_classes=4)
    out = forward(model, _x(16, 64, seed=9))
    for layer, values in (("logit", out["logit"]), ("dx_logits", out["dx_logits"])):  # untrained: ~1e-10, scale up
        kernel, bias = model.get_layer(layer).get_weights()
        model.get_layer(layer).set_weights([kernel / max(float(np.std(values)), 1e-30), bias])
    path = str(tmp_path_factory.mktemp("graph") / "model.onnx")
    names, parity = export_onnx(model, path, 64)
    assert parity < 1e-4
    return path, names


@pytest.mark.parametrize("policy", ["per_image", "batch"])
def test_tta_in_one_call_equals_three_calls(random_graph, policy):
    path, names = random_graph
    engine = OnnxEngine(path, names, policy=policy)
    x = _x(7, 64)
    one = run_views(engine, x, tta=True)
    views = [x, x[:, :, ::-1, :], x[:, ::-1, :, :]]
    three = {k: np.mean([engine.run(np.ascontiguousarray(v))[k] for v in views], axis=0) for k in one}
    assert set(one) == {"logit", "dx_logits"}
    for key in one:
        assert np.max(np.abs(one[key] - three[key])) < 1e-5, key
    assert np.max(np.abs(one[LOGIT] - engine.run(x)[LOGIT])) > 1e-3  # the views really differ
    assert np.std(one[LOGIT]) > 0.1  # and so do the images


def test_auto_batch_policy_times_both_and_keeps_one(random_graph):
    path, names = random_graph
    engine = OnnxEngine(path, names, policy="auto")
    x = _x(8, 64)
    assert engine.mode is None
    first = engine.run(x)
    engine.run(x)
    assert engine.mode in ("per_image", "batch") and all(t > 0 for t in engine._timings.values())
    fixed = OnnxEngine(path, names, policy="batch").run(x)
    assert np.max(np.abs(first[LOGIT] - fixed[LOGIT])) < 1e-5  # timing both ways changes nothing in the result


def test_int8_export_records_its_bounds_and_scores_close_to_float(model_dir, prepared, sample, tmp_path):
    from skinray.config import InferenceConfig

    model_id, meta = export(model_dir, str(tmp_path / "int8"), int8_from=prepared, calibration_images=40)
    v = meta.int8["validation"]
    assert meta.int8["calibration"]["images"] >= 30 and meta.int8["calibration"]["split"] == "train"
    assert v["images"] > 0 and v["max_abs_prob_change"] is not None and v["max_abs_prob_change"] < 0.1
    assert {"roc_auc_change", "sensitivity_float", "sensitivity_int8", "threshold_holds"} <= set(v)
    art = ModelArtifact.open(str(tmp_path / "int8"))
    assert art.model_id == model_id and "model.int8.onnx" in art.meta.files
    assert art.reference() == ModelArtifact.open(model_dir).reference()  # carried over
    x = _x(12, art.meta.preprocessing.size, seed=5)
    z32 = OnnxEngine(art.path("model.onnx"), {LOGIT: art.meta.outputs.logit}).run(x)[LOGIT]
    z8 = make_engine(art, "onnx-int8").run(x)[LOGIT]
    assert np.max(np.abs(z8 - z32)) <= max(0.25 * float(np.ptp(z32)), 0.05)  # moved, not scrambled
    uris = [f"{sample['local']}/images/{n}" for n in sorted(os.listdir(f"{sample['local']}/images"))[:10]]
    a, _ = ImagePredictor(str(tmp_path / "int8")).score_uris(uris)
    b, _ = ImagePredictor(str(tmp_path / "int8"), inference=InferenceConfig(engine="onnx-int8")).score_uris(uris)
    ok = a["error"].isna()
    assert (ok == b["error"].isna()).all() and np.max(np.abs(a.loc[ok, "prob_malignant"] -
                                                           b.loc[ok, "prob_malignant"])) < 0.1
