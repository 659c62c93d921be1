"""Inference engines (ONNX Runtime by default, TensorFlow on request) and the Ray Data predictor class.

The predictor reads and decodes inside the actor: on CPU nodes this keeps decoded arrays out of the object store
and was the fastest arrangement measured (see bench/RESULTS.md); the decode is :func:`skinray.images.decode`,
the same function training used.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from skinray import SkinrayError, images, storage
from skinray.config import ImageConfig
from skinray.model import ONNX_FILE, ONNX_PARITY_LIMIT, ModelArtifact
from skinray.storage import StorageConfig

IO_THREADS = 8
RESULT_COLUMNS = ["prob_malignant", "predicted", "confidence", "threshold", "error"]


class OnnxEngine:
    """ONNX Runtime session; on CPU it runs one image per call, which measured fastest on 2-core hosts."""

    name = "onnx"

    def __init__(self, path: str, use_gpu: bool = False, threads: int = 0, per_image: bool | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if use_gpu:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SkinrayError("--gpu needs onnxruntime-gpu (pip install 'skinray[gpu]') on the scoring nodes")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.per_image = (not use_gpu) if per_image is None else per_image

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.per_image:
            return np.concatenate(
                [self.session.run(None, {self.input_name: x[i : i + 1]})[0].reshape(-1) for i in range(len(x))]
            ) if len(x) else np.zeros(0, np.float32)
        return self.session.run(None, {self.input_name: x})[0].reshape(-1)


class TfEngine:
    """The Keras model under ``tf.function``: the reference the ONNX export is checked against."""

    name = "tf"

    def __init__(self, artifact: ModelArtifact, threads: int = 0) -> None:
        import tensorflow as tf

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
            except RuntimeError:
                pass  # already initialised in this process
        model = artifact.load_keras()
        self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros(0, np.float32)
        return np.asarray(self._fn(np.asarray(x, dtype=np.float32))).reshape(-1)


def make_engine(artifact: ModelArtifact, engine: str = "onnx", use_gpu: bool = False, threads: int = 0) -> Any:
    if engine == "tf":
        return TfEngine(artifact, threads)
    if engine != "onnx":
        raise SkinrayError(f"unknown engine {engine!r}: use onnx or tf")
    onnx_meta = artifact.meta.get("onnx") or {}
    diff = onnx_meta.get("parity_max_abs_diff")
    if not os.path.exists(artifact.path(ONNX_FILE)) or diff is None:
        raise SkinrayError(f"{artifact.uri} has no checked model.onnx: use --engine tf or re-export the model")
    if diff > ONNX_PARITY_LIMIT:
        raise SkinrayError(f"model.onnx differs from Keras by {diff:.2e} (> {ONNX_PARITY_LIMIT}): refusing to score")
    return OnnxEngine(artifact.path(ONNX_FILE), use_gpu=use_gpu, threads=threads)


def resolve_tta(artifact: ModelArtifact, override: bool | None = None) -> bool:
    """Flip TTA for this run: the override when given, else as the model's threshold and calibration were fitted."""
    return bool(artifact.meta.get("tta", False)) if override is None else override


def predict_arrays(engine: Any, x: np.ndarray, tta: bool = False) -> np.ndarray:
    """Raw probabilities; with ``tta`` the mean over the image and its horizontal and vertical flips."""
    if not tta:
        return engine.predict(x)
    views = [x, x[:, :, ::-1, :], x[:, ::-1, :, :]]
    return np.mean([engine.predict(np.ascontiguousarray(v)) for v in views], axis=0)


def read_and_decode(uri: str, storage_cfg: StorageConfig, image_cfg: Any) -> np.ndarray:
    """One image URI → decoded array; every failure is an :class:`images.ImageError` with a reason."""
    fs, path = storage.filesystem(uri, storage_cfg)
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise images.ImageError("missing", uri) from exc
    except OSError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        reason = "missing" if "not found" in msg.lower() or "no such file" in msg.lower() else "unreadable"
        raise images.ImageError(reason, msg) from exc
    return images.decode(data, image_cfg)


def label_predictions(prob: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class name, confidence in that class) at the stored decision threshold."""
    malignant = prob >= threshold
    predicted = np.where(malignant, "malignant", "benign").astype(object)
    confidence = np.where(malignant, prob, 1.0 - prob).astype(np.float32)
    return predicted, confidence


class ImagePredictor:
    """Ray Data ``map_batches`` class: loads the model once per actor, scores a pandas batch of image URIs.

    Every input row comes out once, with ``prob_malignant`` or with ``error`` set.
    """

    def __init__(self, model_uri: str, storage_cfg: StorageConfig | None = None, engine: str = "onnx",
                 use_gpu: bool = False, threads: int = 1, tta: bool | None = None,
                 image_guards: ImageConfig | None = None) -> None:
        self.storage_cfg = storage_cfg or StorageConfig()
        self.artifact = ModelArtifact.open(model_uri, self.storage_cfg)
        self.engine = make_engine(self.artifact, engine, use_gpu, threads)
        self.image_cfg = images.image_config_from_spec(self.artifact.meta["preprocessing"], image_guards)
        self.tta = resolve_tta(self.artifact, tta)
        self.threshold = self.artifact.threshold
        self.pool = ThreadPoolExecutor(IO_THREADS)

    @classmethod
    def from_artifacts(cls, model_uri: str, **kwargs: Any) -> "ImagePredictor":
        return cls(model_uri, **kwargs)

    def _decode(self, uri: Any) -> np.ndarray | str:
        if not isinstance(uri, str) or not uri:
            return "missing: no image URI"
        try:
            return read_and_decode(uri, self.storage_cfg, self.image_cfg)
        except images.ImageError as exc:
            return str(exc)[:300]
        except Exception as exc:  # an unexpected decoder failure is this image's error, not the job's
            return f"undecodable: {type(exc).__name__}: {exc}"[:300]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        decoded = list(self.pool.map(self._decode, batch["image_uri"].tolist()))
        ok = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        prob = np.full(len(batch), np.nan, dtype=np.float32)
        if ok:
            x = np.stack([decoded[i] for i in ok]).astype(np.float32)
            prob[ok] = self.artifact.calibrate(predict_arrays(self.engine, x, self.tta))
        predicted, confidence = label_predictions(prob, self.threshold)
        errors = [None if isinstance(d, np.ndarray) else d for d in decoded]
        out = batch.copy()
        out["prob_malignant"] = prob
        out["predicted"] = np.where(np.isnan(prob), None, predicted)
        out["confidence"] = np.where(np.isnan(prob), np.nan, confidence).astype(np.float32)
        out["threshold"] = np.float32(self.threshold)
        out["error"] = errors
        return out
