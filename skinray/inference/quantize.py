"""An int8 copy of ``model.onnx`` (``model.int8.onnx``): static QDQ quantization with ONNX Runtime, calibrated on
real training images, and checked on the validation split before anyone scores with it.

These CPUs have AVX-512 VNNI, where an int8 MobileNetV2 ran 2-3x faster than float32 — but calibrated on random
inputs its outputs moved by up to 0.073, which is not usable. So the calibration uses a reproducible sample of the
training split (``calibration_images``, seeded), weights are quantized per channel, and the result is recorded in
``skinray.json`` (``int8``): the largest logit change, and on the validation split the ROC-AUC change, the largest
probability change and the sensitivity at the stored threshold with both graphs. ``--engine onnx-int8`` scores with
it; whether it is good enough for a clinic's nightly run is in those numbers (bench/RESULTS.md has ours).
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pandas as pd

from skinray.config import ImageConfig
from skinray.data.prepared import decode_rows
from skinray.decision import metrics
from skinray.decision.operating_point import OperatingPoint
from skinray.io.storage import StorageConfig
from skinray.model.network import LOGIT
from skinray.model.views import Views, run

log = logging.getLogger("skinray.quantize")
CALIBRATION_BATCH = 1  # one image per calibration call: every batch the calibrator sees has the same shape


class _Batches:
    """ONNX Runtime's calibration reader over decoded images, a batch at a time (bounded memory)."""

    def __init__(self, input_name: str, rows: pd.DataFrame, storage_cfg: StorageConfig, image_cfg: ImageConfig,
                 pool: ThreadPoolExecutor) -> None:
        self.input_name = input_name
        self._it = self._iter(rows, storage_cfg, image_cfg, pool)

    def _iter(self, rows: pd.DataFrame, storage_cfg: StorageConfig, image_cfg: ImageConfig,
              pool: ThreadPoolExecutor) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(rows), CALIBRATION_BATCH):
            yield {self.input_name: decode_rows(rows.iloc[i:i + CALIBRATION_BATCH], storage_cfg, image_cfg, pool)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # part of the reader protocol; one pass is all MinMax calibration needs
        pass


def calibration_rows(train_rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A reproducible sample of the training split, stratified by label so both classes shape the ranges."""
    parts = []
    for _, group in train_rows.groupby("label"):
        take = max(1, round(n * len(group) / len(train_rows)))
        parts.append(group.sample(min(take, len(group)), random_state=seed))
    return pd.concat(parts).sort_index()


def quantize(float_path: str, int8_path: str, rows: pd.DataFrame, storage_cfg: StorageConfig,
             image_cfg: ImageConfig) -> None:
    """Static QDQ quantization of ``float_path`` into ``int8_path``, calibrated on ``rows``' images."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(float_path, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(4) as pool:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, int8_path, _Batches(input_name, rows, storage_cfg, image_cfg, pool),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=first_convolution(prepared))


def first_convolution(path: str) -> list[str]:
    """The stem convolution, kept in float: it sees raw pixels, and quantizing it cost the most (bench/RESULTS.md:
    validation ROC-AUC change -0.0069 with it in float, -0.0092 without; percentile calibration -0.0088)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return next(([n.name] for n in model.graph.node if n.op_type == "Conv"), [])


def check(float_engine: Any, int8_engine: Any, val_rows: pd.DataFrame, op: OperatingPoint, views: Views,
          storage_cfg: StorageConfig, image_cfg: ImageConfig) -> dict[str, Any]:
    """Both graphs on the validation split: what int8 changes in the logits, the ranking and the decision."""
    z32, z8 = [], []
    with ThreadPoolExecutor(4) as pool:
        for i in range(0, len(val_rows), 32):
            x = decode_rows(val_rows.iloc[i:i + 32], storage_cfg, image_cfg, pool)
            z32.append(run(float_engine, x, views)[LOGIT])
            z8.append(run(int8_engine, x, views)[LOGIT])
    a, b = op.apply(np.concatenate(z32)), op.apply(np.concatenate(z8))
    y = val_rows["label"].to_numpy(int)
    both = len(set(y.tolist())) == 2
    auc32 = metrics.ranking_metrics(y, a.prob)["roc_auc"] if both else None
    auc8 = metrics.ranking_metrics(y, b.prob)["roc_auc"] if both else None
    sens = [float(s[y == 1].mean()) if (y == 1).any() else None for s in (a.malignant, b.malignant)]
    return {
        "images": int(len(y)), **views.record(),
        "max_abs_logit_change": float(np.max(np.abs(a.logit - b.logit))) if len(y) else None,
        "max_abs_prob_change": float(np.max(np.abs(a.prob - b.prob))) if len(y) else None,
        "roc_auc_float": auc32, "roc_auc_int8": auc8,
        "roc_auc_change": None if auc32 is None else round(auc8 - auc32, 5),
        "sensitivity_float": sens[0], "sensitivity_int8": sens[1],
        "decisions_changed": int(np.sum(a.malignant != b.malignant)),
        "threshold_holds": sens[0] is None or (sens[1] is not None and sens[1] >= sens[0]),
    }
