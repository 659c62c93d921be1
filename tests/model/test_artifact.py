"""The model directory is verified, never trusted: schema, file hashes, a content-keyed remote cache, limits."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from skinray import SkinrayError
from skinray.config import ImageConfig
from skinray.inference.predict import predict
from skinray.io import storage
from skinray.model.artifact import META_FILE, ModelArtifact

from conftest import BUCKET, run_cli

pytestmark = pytest.mark.slow


def _copy(model_dir, tmp_path, name="m"):
    dest = tmp_path / name
    shutil.copytree(model_dir, dest, ignore=shutil.ignore_patterns("_ray"))
    return dest


def _edit(dest, change):
    meta = json.loads((dest / META_FILE).read_text())
    change(meta)
    (dest / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["threshold"].update(threshold=float("nan")), "threshold.threshold"),
    (lambda m: m["threshold"].update(threshold=-1), "threshold.threshold"),
    (lambda m: m["calibration"].update(bias=float("inf")), "calibration.bias"),
    (lambda m: m["calibration"].update(temperature=0), "calibration.temperature"),
    (lambda m: m.pop("threshold"), "threshold"),
    (lambda m: m["preprocessing"].update(resize="stretch"), "preprocessing.resize"),
    (lambda m: m["preprocessing"].update(max_pixels=10**12), "preprocessing.max_pixels"),
    (lambda m: m["preprocessing"].update(color_constancy="retinex"), "preprocessing.color_constancy"),
    (lambda m: m.update(tta_band=-0.5), "tta_band"),
    (lambda m: m.update(tta_band=float("inf")), "tta_band"),
    (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), "files"),
    (lambda m: m.update(format_version=1), "format 1"),
    (lambda m: m.update(format_version=99), "format 99"),
])
def test_a_bad_description_is_refused_with_one_line(change, message, model_dir, tmp_path):
    dest = _copy(model_dir, tmp_path)
    _edit(dest, change)
    with pytest.raises(SkinrayError, match=message):
        ModelArtifact.open(str(dest))
    proc = run_cli("predict", "--model", str(dest), str(tmp_path / "x.jpg"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("skinray: error:"), proc.stderr


def test_a_swapped_or_missing_file_is_refused(model_dir, tmp_path):
    dest = _copy(model_dir, tmp_path)
    other = _copy(model_dir, tmp_path, "other")
    (dest / "model.onnx").write_bytes((other / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(SkinrayError, match="model.onnx does not match the SHA-256"):
        ModelArtifact.open(str(dest))
    os.remove(dest / "model.onnx")
    with pytest.raises(SkinrayError, match="model.onnx is missing"):
        ModelArtifact.open(str(dest))
    (dest / META_FILE).write_text("{not json")
    with pytest.raises(SkinrayError, match="not valid JSON"):
        ModelArtifact.open(str(dest))


def test_a_model_replaced_at_the_same_s3_uri_is_picked_up(model_dir, tmp_path, s3_endpoint):
    uri = f"s3://{BUCKET}/models/replaced-{os.urandom(3).hex()}"
    storage.upload_dir(str(_copy(model_dir, tmp_path, "a")), uri)
    first = ModelArtifact.open(uri)
    assert first.model_id == ModelArtifact.open(model_dir).model_id and first.local_dir != model_dir
    second_dir = _copy(model_dir, tmp_path, "b")
    _edit(second_dir, lambda m: m["threshold"].update(threshold=0.123))  # a re-trained model, same URI
    storage.upload_dir(str(second_dir), uri)
    second = ModelArtifact.open(uri)
    assert second.model_id != first.model_id and second.threshold == 0.123 and second.local_dir != first.local_dir
    # a file swapped on S3 behind an unchanged description is refused on first download
    uri2 = f"s3://{BUCKET}/models/swapped-{os.urandom(3).hex()}"
    storage.upload_dir(str(_copy(model_dir, tmp_path, "c")), uri2)
    storage.write_bytes(f"{uri2}/model.onnx", b"not the model")
    shutil.rmtree(os.path.join("/tmp", "skinray-models"), ignore_errors=True)
    with pytest.raises(SkinrayError, match="does not match the SHA-256"):
        ModelArtifact.open(uri2)


def test_image_limits_come_from_the_run_never_from_the_model(model_dir, tmp_path):
    bomb = tmp_path / "bomb.png"
    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, "PNG")  # 36 M pixels in a few KB
    bomb.write_bytes(buf.getvalue())
    df = predict(model_dir, [str(bomb)], image_guards=ImageConfig(max_pixels=1_000_000))
    assert df["error"].iloc[0].startswith("too_many_pixels")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + os.urandom(2048))
    df = predict(model_dir, [str(big)], image_guards=ImageConfig(max_bytes=1024))
    assert df["error"].iloc[0].startswith("too_large")  # refused from its size, before reading it


def test_export_upgrades_a_format_1_model(model_dir, tmp_path):
    """A model from before logit outputs (a sigmoid graph, no hashes) is re-exported with the same scores."""
    import keras

    from skinray.inference.export import export
    from skinray.model.network import forward

    old = tmp_path / "old"
    old.mkdir()
    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), safe_mode=True, compile=False)
    logit_layer = model.get_layer("logit")
    head = keras.layers.Dense(1, activation="sigmoid", name="prob_malignant")
    v1 = keras.Model(model.inputs, head(logit_layer.input))
    head.set_weights(logit_layer.get_weights())
    v1.save(old / "model.keras")
    meta = json.loads(open(os.path.join(model_dir, META_FILE)).read())
    (old / META_FILE).write_text(json.dumps({
        "format_version": 1, "preprocessing": {**meta["preprocessing"], "max_pixels": 64_000_000},
        "threshold": meta["threshold"], "tta": True, "architecture": {}, "weights_source": "none",
        "calibration": {"method": "temperature and bias (Platt scaling on logits) fitted on validation",
                        "temperature": 1.5, "bias": -0.25}}))
    with pytest.raises(SkinrayError, match="skinray export"):
        ModelArtifact.open(str(old))
    model_id, new_meta = export(str(old), str(tmp_path / "new"))
    art = ModelArtifact.open(str(tmp_path / "new"))
    assert art.model_id == model_id and art.meta.calibration.method == "platt"
    assert (art.meta.calibration.temperature, art.meta.calibration.bias) == (1.5, -0.25)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    z_new = forward(art.load_keras(), x)["logit"]
    p_old = np.asarray(v1(x)).reshape(-1)
    assert np.allclose(1 / (1 + np.exp(-z_new)), p_old, atol=1e-5)  # the same model, now with its logit exposed


def test_export_reads_every_preprocessing_field():
    """int8 calibration and its check decode as scoring does: colour constancy included."""
    from skinray.inference.export import preprocessing
    from skinray.model.artifact import Preprocessing

    spec = Preprocessing(size=64, resize="pad", color_constancy="shades_of_gray")
    for fields in ({"preprocessing": spec}, {"preprocessing": spec.model_dump()}):
        cfg = preprocessing(fields).image_config(ImageConfig(max_bytes=99))
        assert (cfg.size, cfg.resize, cfg.color_constancy, cfg.max_bytes) == (64, "pad", "shades_of_gray", 99)


def test_an_export_that_differs_from_keras_is_refused():
    from skinray.model.artifact import ONNX_PARITY_LIMIT, check_parity

    assert check_parity(ONNX_PARITY_LIMIT / 2) == ONNX_PARITY_LIMIT / 2
    for bad in (ONNX_PARITY_LIMIT * 2, float("nan")):
        with pytest.raises(SkinrayError, match="differs from Keras.*not written"):
            check_parity(bad)
