"""The network: MobileNetV2 + the seed's head, with logit outputs, and its ONNX export.

Outputs are logits, never probabilities: a float32 sigmoid reaches exactly 1.0 above logit ~17 and ties every such
image at the top of the ranking. ``skinray.decision.operating_point`` turns logits into calibrated probabilities in float64.
With diagnoses in the training data the model has a second output, ``dx_logits``: one logit per diagnosis.
An ensemble (:func:`build_ensemble`) is one model with the same outputs, the mean of its members'.
The model directory around these files is :mod:`skinray.model.artifact`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from typing import Any

import numpy as np

from skinray import SkinrayError
from skinray.io import storage
from skinray.io.storage import StorageConfig
from skinray.runtime import import_tensorflow

IMAGENET_SIZES = (96, 128, 160, 192, 224)
SCRATCH_BN_MOMENTUM = 0.5
LOGIT = "logit"
DX_LOGITS = "dx_logits"
# Bumped when the graph changes in a way old checkpoints cannot be loaded into (part of a training run's name).
ARCHITECTURE_VERSION = 2
MODEL_NAME = "skinray_mobilenetv2"
ENSEMBLE_NAME = "skinray_ensemble"
MEMBER_PREFIX = "member_"


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
    return path, f"file {path} (sha256 {storage.sha256_file(path)[:16]})"


_READOUT: Any = None


def malignant_readout_layer() -> Any:
    """The Keras layer that reads the binary logit out of the diagnosis logits (registered once, so that
    ``model.keras`` files holding it load in safe mode):
    ``logit = logsumexp(dx_logits[malignant]) - logsumexp(dx_logits[benign])`` = log P(malignant) / P(benign)
    under the diagnosis softmax, computed without a softmax so it never saturates."""
    global _READOUT
    if _READOUT is not None:
        return _READOUT
    import_tensorflow()
    import keras

    @keras.saving.register_keras_serializable(package="skinray")
    class MalignantReadout(keras.layers.Layer):
        def __init__(self, malignant: list[bool], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.malignant = [bool(m) for m in malignant]

        def call(self, dx_logits: Any) -> Any:
            ops = keras.ops
            mask = ops.convert_to_tensor(self.malignant)
            far = ops.convert_to_tensor(-1e9, dtype=dx_logits.dtype)
            mal = ops.logsumexp(ops.where(mask, dx_logits, far), axis=-1, keepdims=True)
            ben = ops.logsumexp(ops.where(mask, far, dx_logits), axis=-1, keepdims=True)
            return mal - ben

        def compute_output_shape(self, input_shape: Any) -> Any:
            return (*input_shape[:-1], 1)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "malignant": self.malignant}

    _READOUT = MalignantReadout
    return _READOUT


def load_keras(path: str) -> Any:
    """A ``model.keras`` file, in safe mode, with skinray's own layers registered first (the one loader)."""
    import_tensorflow()  # quietly, before Keras pulls it in
    import keras

    malignant_readout_layer()
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def build_model(image_size: int, alpha: float = 1.0, weights: str | None = "imagenet", dense_units: int = 64,
                dropout: float = 0.3, freeze_base: bool | None = None, input_scaling: str = "mobilenet",
                dx_classes: int = 0, malignant_dx: list[bool] | None = None, name: str = MODEL_NAME) -> Any:
    """Input 0–255 floats → MobileNetV2 scaling ([-1, 1]) → frozen base → GAP → Dense → Dropout → logit.

    The scaling is a layer so the exported model needs nothing but resized RGB pixels. ``freeze_base`` defaults to
    frozen with pretrained weights and trainable (BatchNorm in training mode) without: frozen random filters are
    noise, so a weight-less model (tests, the offline demo) must learn its base. ``dx_classes`` > 1 adds the
    diagnosis output (one logit per diagnosis, from the pooled features). ``malignant_dx`` (one flag per diagnosis)
    makes the diagnosis softmax the model's target: there is no binary head, and the ``logit`` output is read out
    of the diagnosis logits (:func:`malignant_readout_layer`).
    """
    import_tensorflow()
    import keras

    if malignant_dx is not None and (len(malignant_dx) != dx_classes or all(malignant_dx) or not any(malignant_dx)):
        raise SkinrayError(f"a diagnosis target needs benign and malignant diagnoses among its {dx_classes}, got "
                           f"flags {malignant_dx}")

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
        # score with almost-initial moving statistics, i.e. a constant output. The variance of a random deep stack
        # is orders of magnitude below the initial moving variance (1): at 0.9 the 8 steps of the tests' training
        # still gave validation logits within 3e-6 of each other; 0.5 tracks them within 4 steps.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    # A pretrained base keeps BatchNorm in inference mode, also when its top layers are fine-tuned later.
    x = base(x, training=False) if frozen else base(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(pooled)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    if malignant_dx is not None:  # the same head, ending in the diagnoses
        dx = keras.layers.Dense(dx_classes, name=DX_LOGITS)(x)
        logit = malignant_readout_layer()(malignant_dx, name=LOGIT)(dx)
        return keras.Model(inputs, [logit, dx], name=name)
    outputs = [keras.layers.Dense(1, name=LOGIT)(x)]
    if dx_classes > 1:
        outputs.append(keras.layers.Dense(dx_classes, name=DX_LOGITS)(pooled))
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=name)


def build_ensemble(members: list[Any]) -> Any:
    """One model whose outputs are the mean of its members' logits (and diagnosis logits): k fold models in one
    graph, so scoring runs them in one ONNX Runtime session. Members come from :func:`build_model` with distinct
    names (``member_1`` …) and the same outputs."""
    import_tensorflow()
    import keras

    if len(members) < 2:
        raise SkinrayError(f"an ensemble needs at least two members, got {len(members)}")
    inputs = keras.Input(tuple(members[0].inputs[0].shape[1:]), name="image")
    outs = [m(inputs) for m in members]
    outs = [o if isinstance(o, (list, tuple)) else [o] for o in outs]
    if len({len(o) for o in outs}) != 1:
        raise SkinrayError("ensemble members must have the same outputs")
    names = (LOGIT, DX_LOGITS)
    mean = [keras.layers.Average(name=names[i])([o[i] for o in outs]) for i in range(len(outs[0]))]
    return keras.Model(inputs, mean if len(mean) > 1 else mean[0], name=ENSEMBLE_NAME)


def with_features(model: Any) -> Any:
    """``model`` with a third output, ``features``: the pooled features its head reads (an ensemble: the mean of its
    members'), for the out-of-distribution guard (:mod:`skinray.model.ood`). Same weights, same other outputs."""
    import_tensorflow()
    import keras

    from skinray.model.ood import FEATURES

    def parts(net: Any, inputs: Any) -> list[Any]:
        wrapped = keras.Model(net.inputs, [*net.outputs, net.get_layer("gap").output])
        out = wrapped(inputs)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    outs = [parts(m, inputs) for m in members_of(model)]
    names = [*((LOGIT, DX_LOGITS)[: len(outs[0]) - 1]), FEATURES]
    if len(outs) == 1:
        merged = [keras.layers.Identity(name=n)(t) for n, t in zip(names, outs[0])]
    else:
        merged = [keras.layers.Average(name=n)([o[i] for o in outs]) for i, n in enumerate(names)]
    return keras.Model(inputs, merged, name=model.name)


def members_of(model: Any) -> list[Any]:
    """The single networks inside ``model``: its ensemble members, or the model itself."""
    import keras

    members = [layer for layer in model.layers
               if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)]
    return members if model.name == ENSEMBLE_NAME and members else [model]


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


def output_names(model: Any) -> list[str]:
    """Our names of the model's outputs, in order: ``logit``, then ``dx_logits`` and ``features`` where present."""
    from skinray.model.ood import FEATURES

    has_features = FEATURES in list(getattr(model, "output_names", None) or [])
    heads = [LOGIT, DX_LOGITS][: len(model.outputs) - int(has_features)]
    return heads + [FEATURES] * has_features


def forward(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Keras forward pass → ``{"logit": (n,), "dx_logits": (n, K), "features": (n, D)}`` (the last two only when
    the model has them)."""
    out = model(np.asarray(x, np.float32), training=False)
    outs = out if isinstance(out, (list, tuple)) else [out]
    result = {name: np.asarray(value, np.float32) for name, value in zip(output_names(model), outs)}
    result[LOGIT] = result[LOGIT].reshape(-1)
    return result


def export_onnx(model: Any, path: str, image_size: int, seed: int = 0,
                samples: np.ndarray | None = None) -> tuple[dict[str, str], float]:
    """Write ``model.onnx``; returns (our output name → the graph's output name, max |ONNX − Keras| over outputs).

    Checked on random inputs and (if given) real ones.
    """
    import onnxruntime as ort

    model(np.zeros((1, image_size, image_size, 3), np.float32))  # Keras needs one call before export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx probes np.object
        model.export(path, format="onnx", verbose=False)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(8, image_size, image_size, 3)).astype(np.float32)
    if samples is not None and len(samples):
        x = np.concatenate([x, samples.astype(np.float32)])
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    graph_outputs = session.run(None, {session.get_inputs()[0].name: x})
    reference = forward(model, x)
    names: dict[str, str] = {}
    diff = 0.0
    for ours, meta, value in zip(output_names(model), session.get_outputs(), graph_outputs):  # in the model's order
        names[ours] = meta.name
        diff = max(diff, float(np.max(np.abs(value.reshape(reference[ours].shape) - reference[ours]))))
    if set(names) != set(reference):
        raise SkinrayError(f"the exported ONNX graph has outputs {list(names)}, the model {list(reference)}")
    return names, diff
