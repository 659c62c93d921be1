"""MobileNetV2 + the seed's head, and the model directory: the only contract between training and scoring.

A model directory holds ``model.keras`` (Keras 3, loads with ``safe_mode=True``), ``model.onnx`` (what scoring
runs by default) and ``skinray.json`` (preprocessing, threshold, calibration, provenance).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from skinray import SkinrayError, storage
from skinray.storage import StorageConfig

MODEL_FILE = "model.keras"
ONNX_FILE = "model.onnx"
META_FILE = "skinray.json"
FORMAT_VERSION = 1
ONNX_PARITY_LIMIT = 1e-4
IMAGENET_SIZES = (96, 128, 160, 192, 224)
SCRATCH_BN_MOMENTUM = 0.9
CLASS_NAMES = {0: "benign", 1: "malignant"}
ARTIFACT_FILES = (META_FILE, MODEL_FILE, ONNX_FILE, "config.yaml")


def resolve_weights(weights: str, storage_cfg: StorageConfig | None = None) -> tuple[str | None, str]:
    """(what Keras takes, a provenance string). S3 weights are downloaded to a local cache first."""
    w = weights.strip()
    if w.lower() == "none":
        return None, "none (random initialisation)"
    if w.lower() == "imagenet":
        return "imagenet", "imagenet (keras.applications download or $KERAS_HOME/models cache)"
    if storage.is_s3(w):
        cache = os.path.join(tempfile.gettempdir(), "skinray-weights", hashlib.sha1(w.encode()).hexdigest()[:12])
        local = os.path.join(cache, os.path.basename(w))
        if not os.path.exists(local):
            storage.local_copy(w, cache, storage_cfg)
        return local, f"file {w}"
    path = storage.normalize(w)
    if not os.path.isfile(path):
        raise SkinrayError(f"weights file not found: {w}")
    return path, f"file {path} (sha256 {sha256_file(path)[:16]})"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_model(image_size: int, alpha: float = 1.0, weights: str | None = "imagenet", dense_units: int = 64,
                dropout: float = 0.3, freeze_base: bool | None = None, input_scaling: str = "mobilenet") -> Any:
    """Input 0–255 floats → MobileNetV2 scaling ([-1, 1]) → frozen base → GAP → Dense → Dropout → sigmoid.

    The scaling is a layer so the exported model needs nothing but resized RGB pixels. ``freeze_base`` defaults to
    frozen with pretrained weights and trainable (BatchNorm in training mode) without: frozen random filters are
    noise, so a weight-less model (tests, the offline demo) must learn its base.
    """
    import keras

    if weights == "imagenet" and image_size not in IMAGENET_SIZES:
        raise SkinrayError(
            f"ImageNet MobileNetV2 weights exist for image sizes {IMAGENET_SIZES}, not {image_size}: "
            "choose one of those or pass --weights none/PATH"
        )
    inputs = keras.Input((image_size, image_size, 3), name="image")
    if input_scaling == "unit":  # the seed's [0, 1]: does not match the ImageNet weights; kept for its recipe
        x = keras.layers.Rescaling(1.0 / 255.0, name="unit_scaling")(inputs)
    else:
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenet_v2_scaling")(inputs)
    try:
        base = keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3), include_top=False, weights=weights, alpha=alpha
        )
    except SkinrayError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if weights == "imagenet":
            raise SkinrayError(
                f"cannot load ImageNet weights ({first}); without internet pass --weights PATH to the "
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 file"
            ) from exc
        raise SkinrayError(f"weights {weights} do not fit MobileNetV2(alpha={alpha}, no top): {first}") from exc
    frozen = weights is not None if freeze_base is None else freeze_base
    base.trainable = not frozen
    if weights is None:
        # Keras' BatchNorm momentum (0.999) suits long ImageNet runs; a short from-scratch run would otherwise
        # score with almost-initial moving statistics, i.e. a constant output.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    # A pretrained base keeps BatchNorm in inference mode, also when its top layers are fine-tuned later.
    x = base(x, training=False) if frozen else base(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="prob_malignant")(x)
    return keras.Model(inputs, outputs, name="skinray_mobilenetv2")


def with_diagnosis_head(model: Any, n_classes: int) -> Any:
    """The training view of ``model`` with a second output: diagnosis logits from the pooled features.

    It shares every layer with ``model``, so training it trains ``model``; the auxiliary Dense layer is never
    exported, and ``model`` keeps the fixed binary head that scoring runs.
    """
    import keras

    aux = keras.layers.Dense(n_classes, name="aux_diagnosis")(model.get_layer("gap").output)
    return keras.Model(model.inputs, [model.outputs[0], aux], name="skinray_train_view")


def base_of(model: Any) -> Any:
    """The MobileNetV2 base: the one nested model among the layers (Keras names it after alpha and size)."""
    import keras

    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def unfreeze_top(model: Any, n_layers: int) -> int:
    """Make the top ``n_layers`` of the base trainable (BatchNorm layers stay frozen); returns how many."""
    import keras

    base = base_of(model)
    base.trainable = True
    count = 0
    for i, layer in enumerate(base.layers):
        trainable = i >= len(base.layers) - n_layers and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        count += int(trainable)
    return count


def export_onnx(model: Any, path: str, image_size: int, seed: int = 0,
                samples: np.ndarray | None = None) -> float:
    """Write ``model.onnx`` and return the max |ONNX − Keras| on random and (if given) real inputs."""
    import onnxruntime as ort

    model(np.zeros((1, image_size, image_size, 3), np.float32))  # Keras needs one call before export
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx probes np.object
        model.export(path, format="onnx", verbose=False)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(8, image_size, image_size, 3)).astype(np.float32)
    if samples is not None and len(samples):
        x = np.concatenate([x, samples.astype(np.float32)])
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0].reshape(-1)
    keras_out = np.asarray(model(x, training=False)).reshape(-1)
    return float(np.max(np.abs(onnx_out - keras_out)))


def model_id(local_dir: str) -> str:
    """Content hash of the model directory: the same files give the same id on every machine."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(local_dir)):
        path = os.path.join(local_dir, name)
        if name in ARTIFACT_FILES and name != "config.yaml" and os.path.isfile(path):
            h.update(name.encode())
            h.update(sha256_file(path).encode())
    return h.hexdigest()[:16]


@dataclass
class ModelArtifact:
    """A model directory opened for use (downloaded first when it lives on S3)."""

    uri: str
    local_dir: str
    meta: dict[str, Any]
    model_id: str

    @classmethod
    def open(cls, uri: str, storage_cfg: StorageConfig | None = None) -> "ModelArtifact":
        if not storage.exists(storage.join(uri, META_FILE), storage_cfg):
            raise SkinrayError(f"{uri} is not a skinray model directory (no {META_FILE}): run `skinray train`")
        if storage.is_s3(storage.normalize(uri)):
            key = hashlib.sha1(storage.normalize(uri).encode()).hexdigest()[:12]
            cache = os.path.join(tempfile.gettempdir(), "skinray-models", key)
            local = os.path.join(cache, os.path.basename(storage.normalize(uri)))
            if not os.path.exists(os.path.join(local, META_FILE)):
                tmp = f"{local}.tmp-{os.getpid()}"
                for name in ARTIFACT_FILES:  # not the _ray/ checkpoints that may sit beside them
                    src = storage.join(uri, name)
                    if storage.exists(src, storage_cfg):
                        os.makedirs(tmp, exist_ok=True)
                        with open(os.path.join(tmp, name), "wb") as f:
                            f.write(storage.read_bytes(src, storage_cfg))
                os.makedirs(cache, exist_ok=True)
                try:
                    os.replace(tmp, local)
                except OSError:  # another actor on this node finished first
                    pass
        else:
            local = storage.normalize(uri)
        meta = storage.read_json(os.path.join(local, META_FILE))
        if meta.get("format_version") != FORMAT_VERSION:
            raise SkinrayError(f"{uri}: model format {meta.get('format_version')} is not {FORMAT_VERSION}")
        return cls(uri=uri, local_dir=local, meta=meta, model_id=model_id(local))

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"]["threshold"])

    @property
    def temperature(self) -> float:
        return float(self.meta.get("calibration", {}).get("temperature", 1.0))

    @property
    def calibration_bias(self) -> float:
        return float(self.meta.get("calibration", {}).get("bias", 0.0))

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Raw sigmoid scores → calibrated ``prob_malignant`` (the fit stored in skinray.json)."""
        from skinray.metrics import apply_temperature

        return apply_temperature(raw, self.temperature, self.calibration_bias)

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["size"])

    def path(self, name: str) -> str:
        return os.path.join(self.local_dir, name)

    def load_keras(self) -> Any:
        import keras

        return keras.saving.load_model(self.path(MODEL_FILE), safe_mode=True, compile=False)
