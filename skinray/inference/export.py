"""``skinray export``: a model directory re-exported from its ``model.keras`` into the current format.

Format-1 models (from skinray before logit outputs and file hashes) end in a sigmoid; the export swaps that last
activation for the identity, so the graph outputs the logit the sigmoid was applied to, re-exports ONNX with a
parity check, and carries the operating point over unchanged (it was fitted on the logit of the same scores).
A format-2 model is re-exported as it is (e.g. after an ONNX Runtime upgrade).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

from skinray import SkinrayError
from skinray.config import ImageConfig
from skinray.decision.calibration import CALIBRATION_METHODS, Calibration
from skinray.decision.operating_point import ThresholdChoice
from skinray.inference import quantize
from skinray.io import storage
from skinray.io.storage import StorageConfig
from skinray.model import artifact, views
from skinray.model.artifact import (
    CONFIG_FILE,
    INT8_FILE,
    MODEL_FILE,
    ONNX_FILE,
    REFERENCE_FILE,
    ModelMeta,
    Outputs,
    Preprocessing,
)
from skinray.model.network import DX_LOGITS, LOGIT, export_onnx, load_keras, with_features
from skinray.model.ood import FEATURES, FILE as OOD_FILE
from skinray.runtime import EXPORT_MODULES, import_tensorflow, require_train_extra, versions

log = logging.getLogger("skinray.export")
V1_OUTPUT_LAYER = "prob_malignant"


def _v1_to_meta(old: dict[str, Any], created: str) -> dict[str, Any]:
    cal = old.get("calibration") or {}
    method = {v: k for k, v in CALIBRATION_METHODS.items()}.get(cal.get("method", "none"), "none")
    pre = old.get("preprocessing") or {}
    return {
        "created_at": created, "recipe": old.get("recipe"),
        "architecture": {**(old.get("architecture") or {}), "upgraded_from_format": 1},
        "weights_source": old.get("weights_source", "unknown"),
        "preprocessing": Preprocessing(size=pre["size"], resize=pre["resize"]),
        "calibration": Calibration(method=method, temperature=cal.get("temperature", 1.0), bias=cal.get("bias", 0.0)),
        "threshold": ThresholdChoice(**old["threshold"]), "tta": bool(old.get("tta", False)),
        "training": old.get("training") or {}, "data": old.get("data") or {}, "history": old.get("history") or [],
        "validation": old.get("validation"),
    }


def preprocessing(fields: dict[str, Any]) -> Preprocessing:
    """The model's preprocessing spec from its description fields (a dict when read, an object when upgraded)."""
    pre = fields["preprocessing"]
    return pre if isinstance(pre, Preprocessing) else Preprocessing.model_validate(pre)


def _int8(out_dir: str, names: dict[str, str], fields: dict[str, Any], prepared: str, n: int, seed: int,
          storage_cfg: StorageConfig | None) -> dict[str, Any]:
    """``model.int8.onnx`` beside ``model.onnx``, and what it changes on the validation split."""
    from skinray.data.prepare import load_prepared
    from skinray.decision.operating_point import OperatingPoint
    from skinray.inference.engines import OnnxEngine

    rows = load_prepared(prepared, storage_cfg)
    image_cfg = preprocessing(fields).image_config(ImageConfig())  # every field: size, resize, colour constancy
    sample = quantize.calibration_rows(rows[rows["split"] == "train"], n, seed)
    log.info("int8: calibrating on %d training images, checking on the validation split", len(sample))
    quantize.quantize(os.path.join(out_dir, ONNX_FILE), os.path.join(out_dir, INT8_FILE), sample,
                      storage_cfg or StorageConfig(), image_cfg)
    outputs = {k: v for k, v in names.items()}
    op = OperatingPoint(Calibration.model_validate(fields["calibration"]),
                        ThresholdChoice.model_validate(fields["threshold"]))
    checked = quantize.check(OnnxEngine(os.path.join(out_dir, ONNX_FILE), outputs, policy="batch"),
                             OnnxEngine(os.path.join(out_dir, INT8_FILE), outputs, policy="batch"),
                             rows[rows["split"] == "val"], op,
                             views.for_model(bool(fields.get("tta")), fields.get("tta_band"), op),
                             storage_cfg or StorageConfig(), image_cfg)
    return {"file": INT8_FILE,
            "format": "QDQ, weights int8 per channel, activations uint8 (MinMax); the stem convolution in float",
            "calibration": {"source": prepared, "split": "train", "images": int(len(sample)), "seed": seed},
            "validation": checked}


def export(model_uri: str, out_uri: str, storage_cfg: StorageConfig | None = None,
           int8_from: str | None = None, calibration_images: int = 300, seed: int = 0) -> tuple[str, ModelMeta]:
    """Re-export ``model_uri`` into ``out_uri`` (a new directory); returns (model id, description).

    With ``int8_from`` (a prepared dataset) an int8 graph is added, calibrated on ``calibration_images`` training
    images and checked on the validation split (:mod:`skinray.inference.quantize`).
    """
    require_train_extra("export", EXPORT_MODULES)
    import_tensorflow()
    import keras

    src = storage.normalize(model_uri)
    if storage.normalize(out_uri) == src:
        raise SkinrayError("export writes a new model directory: --out must differ from --model")
    old = artifact.read_meta_json(src, storage_cfg)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory() as work:
        if old.get("format_version") == artifact.FORMAT_VERSION:
            opened = artifact.ModelArtifact.open(src, storage_cfg)  # verified: hashes and schema
            fields = opened.meta.model_dump(exclude={"files", "onnx", "outputs", "versions", "created_at", "int8"})
            keras_path, diagnoses = opened.path(MODEL_FILE), opened.diagnoses
        elif old.get("format_version") == 1:
            fields = _v1_to_meta(old, created)
            keras_path = os.path.join(work, "in.keras")
            with open(keras_path, "wb") as f:
                f.write(storage.read_bytes(storage.join(src, MODEL_FILE), storage_cfg))
            diagnoses = []
        else:
            raise SkinrayError(f"{src}: model format {old.get('format_version')!r} cannot be exported")
        model = load_keras(keras_path)
        if old.get("format_version") == 1:
            last = model.get_layer(V1_OUTPUT_LAYER)
            if getattr(last, "activation", None) is not keras.activations.sigmoid:
                raise SkinrayError(f"{src}: the last layer is not the sigmoid a format-1 model ends in")
            last.activation = keras.activations.linear  # the graph now outputs the logit
        out_dir = os.path.join(work, "model")
        os.makedirs(out_dir)
        model.save(os.path.join(out_dir, MODEL_FILE))
        guard = fields.get("ood")  # the guard's graph output is made again; its statistics carry over
        names, parity = export_onnx(with_features(model) if guard else model, os.path.join(out_dir, ONNX_FILE),
                                    preprocessing(fields).size)
        if guard:
            fields["ood"] = {**guard, "output": names[FEATURES]}
        for name in (CONFIG_FILE, REFERENCE_FILE, OOD_FILE):  # carried over as they are
            if storage.exists(storage.join(src, name), storage_cfg):
                with open(os.path.join(out_dir, name), "wb") as f:
                    f.write(storage.read_bytes(storage.join(src, name), storage_cfg))
        if int8_from:
            fields["int8"] = _int8(out_dir, names, fields, int8_from, calibration_images, seed, storage_cfg)
        meta = ModelMeta(**{**fields, "created_at": created,
                            "outputs": Outputs(logit=names[LOGIT], dx_logits=names.get(DX_LOGITS),
                                               diagnoses=diagnoses if DX_LOGITS in names else [],
                                               features=names.get(FEATURES)),
                            "onnx": {"parity_max_abs_diff": parity}, "versions": versions()})
        artifact.check_parity(parity)
        model_id, meta = artifact.write(out_dir, out_uri, meta, storage_cfg)
    log.info("exported %s to %s (model %s, ONNX parity %.1e%s)", src, out_uri, model_id, parity,
             "" if meta.int8 is None else ", int8: validation ROC-AUC change {}, largest probability change {:.4f}"
             .format(meta.int8["validation"]["roc_auc_change"], meta.int8["validation"]["max_abs_prob_change"] or 0))
    return model_id, meta

