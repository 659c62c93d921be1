"""Where the model looked: Grad-CAM on MobileNetV2's last convolutional block (``out_relu``) for a few images.

Computed with TensorFlow on the Keras model (the ONNX graph has no gradients) and only for the images a person
will look at — the most suspicious and the borderline ones of a run (``score.explain_top_k``) or the handful given
to ``skinray predict --explain``. The map is the ReLU of the activations weighted by the mean gradient of the
malignancy logit, upsampled to the image and laid over it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from skinray.model.network import DX_LOGITS, LOGIT, base_of, malignant_readout_layer, members_of
from skinray.runtime import import_tensorflow

HEAD_LAYERS = ("gap", "head_dense", "head_dropout", LOGIT)
OVERLAY_ALPHA = 0.45


class GradCam:
    """Grad-CAM for a skinray Keras model (input → scaling → MobileNetV2 base → GAP → dense → dropout → logit).

    For an ensemble the logit is the members' mean, so its map is the members' gradient-weighted activations
    averaged before the ReLU: the Grad-CAM of what the ensemble scores, not an average of separate pictures.
    """

    def __init__(self, model: Any) -> None:
        self.tf = import_tensorflow("Grad-CAM")
        self.model = model
        self.members = [(next(layer for layer in m.layers if "scaling" in layer.name), base_of(m), _head(m))
                        for m in members_of(model)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Maps in [0, 1] of shape (n, size, size) for float pixels ``x`` of shape (n, size, size, 3)."""
        tf = self.tf
        x = tf.constant(np.asarray(x, np.float32))
        total = 0.0
        for scaling, base, head in self.members:
            with tf.GradientTape() as tape:
                features = base(scaling(x), training=False)  # the base ends in out_relu
                tape.watch(features)
                out = features
                for layer in head:
                    out = layer(out, training=False) if layer.name == "head_dropout" else layer(out)
            grads = tape.gradient(out, features)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            total += tf.reduce_sum(weights * features, axis=-1) / len(self.members)
        cam = tf.nn.relu(total)
        cam = tf.image.resize(cam[..., None], x.shape[1:3], method="bilinear")[..., 0].numpy()
        top = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        return np.where(top > 0, cam / np.maximum(top, 1e-12), 0.0).astype(np.float32)

    def timed(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Maps and the seconds per image they took (recorded in run.json)."""
        started = time.perf_counter()
        maps = self(x) if len(x) else np.zeros((0,) + x.shape[1:3], np.float32)
        return maps, (time.perf_counter() - started) / max(len(x), 1)


def _head(member: Any) -> list[Any]:
    """The layers from the base's features to the logit; with the diagnosis target the logit is read out of the
    diagnosis logits, which sit between the head and the logit."""
    names = list(HEAD_LAYERS)
    if isinstance(member.get_layer(LOGIT), malignant_readout_layer()):
        names.insert(-1, DX_LOGITS)
    return [member.get_layer(name) for name in names]


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The map in colour (inferno) over the image, weighted by the map itself so cold areas stay readable."""
    from matplotlib import colormaps

    heat = colormaps["inferno"](np.clip(cam, 0, 1))[..., :3] * 255.0
    w = (alpha * np.clip(cam, 0, 1))[..., None]
    return np.clip(image.astype(np.float32) * (1 - w) + heat * w, 0, 255).astype(np.uint8)


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(mean saliency inside ``mask``, mean outside): how a map's mass sits relative to a region."""
    mask = mask.astype(bool)
    inside = float(cam[mask].mean()) if mask.any() else 0.0
    outside = float(cam[~mask].mean()) if (~mask).any() else 0.0
    return inside, outside
