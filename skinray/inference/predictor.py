"""The predictor: one model loaded per Ray actor, image URIs in, result columns out — every row once, scored or
with its ``error``.

``score``, ``evaluate`` and ``predict`` all run this class, so a prediction on one image equals its batch score. It
reads and decodes inside the actor: on CPU nodes this keeps decoded arrays out of the object store and was the
fastest arrangement measured (bench/RESULTS.md). The engine returns logits; flip TTA averages the views' logits
(:mod:`skinray.model.views`: all views in one engine call, only near the threshold when the model has a band), and
:class:`skinray.decision.operating_point.OperatingPoint` turns them into calibrated probabilities in float64. It is
apart from the Ray Data plan because ``predict`` runs it in-process, without Ray.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from skinray.config import ImageConfig, InferenceConfig
from skinray.data import images
from skinray.inference.engines import make_engine
from skinray.io.storage import StorageConfig
from skinray.model import views
from skinray.model.artifact import ModelArtifact
from skinray.model.network import DX_LOGITS, LOGIT
from skinray.model.ood import FEATURES
from skinray.runtime import node_id

IO_THREADS = 8
RESULT_COLUMNS = ["prob_malignant", "logit_malignant", "predicted", "confidence", "threshold", "dx_pred", "dx_probs",
                  "ood_score", "out_of_distribution", "error", "image_width", "image_height", "mean_red", "mean_green",
                  "mean_blue"]
OUT_OF_DISTRIBUTION = "out_of_distribution"  # ``predicted`` of an image the guard flags: no benign/malignant call
# where and how each row was scored (node, engine call, views averaged, when its actor had the model loaded); the
# driver aggregates and drops them
WORKER_COLUMNS = ["_node_id", "_batch_mode", "_views", "_ready_at"]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class ImagePredictor:
    """Loads a model once (per Ray actor) and scores image URIs; ``map_batches`` calls it on pandas batches.

    Every input row comes out once, with ``prob_malignant`` or with ``error`` set.
    """

    def __init__(self, model_uri: str, storage_cfg: StorageConfig | None = None,
                 inference: InferenceConfig | None = None, image_guards: ImageConfig | None = None,
                 use_gpu: bool = False, threads: int = 1) -> None:
        self.storage_cfg = storage_cfg or StorageConfig()
        inference = inference or InferenceConfig()
        self.artifact = ModelArtifact.open(model_uri, self.storage_cfg)
        self.engine = make_engine(self.artifact, inference.engine, use_gpu, threads, inference.batch_policy)
        self.image_cfg = self.artifact.image_config(image_guards or ImageConfig())
        self.op = self.artifact.operating_point
        self.views = self.artifact.views(inference.tta)
        self.diagnoses = self.artifact.diagnoses
        self.guard = self.artifact.guard() if inference.engine != "onnx-int8" else None
        self.pool = ThreadPoolExecutor(IO_THREADS)
        self.node_id = node_id()
        self.ready_at = time.time()  # model loaded: run.json splits the time to the first rows here

    def decode(self, uri: Any, root: Any = None) -> tuple[np.ndarray, tuple[int, int]] | str:
        """(pixels, stored size), or the row's error text (:func:`images.row_error`); a local image must stay inside
        ``root``."""
        if not isinstance(uri, str) or not uri:
            return images.row_error("missing", "no image URI")
        try:
            return images.load_sized(uri, self.storage_cfg, self.image_cfg, root if isinstance(root, str) else None)
        except images.ImageError as exc:
            return str(exc)[:300]
        except Exception as exc:  # an unexpected decoder failure is this image's error, not the job's
            return images.row_error("undecodable", f"{type(exc).__name__}: {exc}")[:300]

    def score_decoded(self, decoded: list[Any]) -> pd.DataFrame:
        """Result columns for decoded images (``(pixels, size)`` or an error text that passes through as ``error``):
        the scores, and the images' stored size and mean colour (for drift checks and image QA)."""
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        n = len(decoded)
        size = np.full((n, 2), -1, np.int64)
        color = np.full((n, 3), np.nan, np.float32)
        for i in ok:
            size[i] = decoded[i][1]
            color[i] = images.mean_color(decoded[i][0])
        logit = np.full(n, np.nan)
        n_views = np.zeros(n, np.int8)  # views per row (0: not scored)
        dx_probs: list[str | None] = [None] * n
        dx_pred: list[str | None] = [None] * n
        ood = np.full(n, np.nan)
        if ok:
            raw = views.run(self.engine, np.stack([decoded[i][0] for i in ok]).astype(np.float32), self.views)
            logit[ok] = raw[LOGIT]
            n_views[ok] = raw[views.VIEWS]
            if self.guard is not None:
                ood[ok] = self.guard.score(raw[FEATURES])
            if self.diagnoses and DX_LOGITS in raw:
                probs = _softmax(raw[DX_LOGITS])
                for j, i in enumerate(ok):
                    dx_pred[i] = self.diagnoses[int(np.argmax(probs[j]))]
                    dx_probs[i] = json.dumps({d: round(float(p), 6) for d, p in zip(self.diagnoses, probs[j])})
        scored = self.op.apply(np.nan_to_num(logit))
        failed = np.isnan(logit)
        outside = ~np.isnan(ood) & (ood > (self.artifact.meta.ood.threshold if self.guard is not None else np.inf))
        call = np.where(outside, OUT_OF_DISTRIBUTION, np.where(scored.malignant, "malignant", "benign"))
        return pd.DataFrame({
            "prob_malignant": np.where(failed, np.nan, scored.prob),  # kept for an image out of distribution: audit
            "logit_malignant": np.where(failed, np.nan, scored.logit),
            "predicted": np.where(failed, None, call).astype(object),
            "confidence": np.where(failed, np.nan, scored.confidence),
            "threshold": np.full(n, self.op.threshold.threshold),
            "dx_pred": dx_pred,
            "dx_probs": dx_probs,
            "ood_score": ood,
            "out_of_distribution": pd.array(np.where(np.isnan(ood), None, outside), dtype="boolean"),
            "error": [d if isinstance(d, str) else None for d in decoded],
            "image_width": pd.array(np.where(size[:, 0] >= 0, size[:, 0], None), dtype="Int32"),
            "image_height": pd.array(np.where(size[:, 1] >= 0, size[:, 1], None), dtype="Int32"),
            "mean_red": color[:, 0], "mean_green": color[:, 1], "mean_blue": color[:, 2],
            "_views": n_views,
        })

    def score_uris(self, uris: list[Any], roots: list[Any] | None = None, errors: list[Any] | None = None
                   ) -> tuple[pd.DataFrame, list[Any]]:
        """Scores for image URIs; a row that already has an error (``errors``) is not read at all."""
        n = len(uris)
        roots, errors = roots or [None] * n, errors or [None] * n
        decoded = list(self.pool.map(lambda u, r, e: e if isinstance(e, str) and e else self.decode(u, r),
                                     uris, roots, errors))
        return self.score_decoded(decoded), decoded

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        column = lambda name: batch[name].tolist() if name in batch else None  # noqa: E731
        result, _ = self.score_uris(batch["image_uri"].tolist(), column("image_root"), column("input_error"))
        out = batch.reset_index(drop=True).copy()
        for col in RESULT_COLUMNS:
            out[col] = result[col]
        out["_node_id"] = self.node_id
        out["_batch_mode"] = getattr(self.engine, "last_mode", None) or self.engine.mode or "batch"
        out["_views"] = result["_views"]
        out["_ready_at"] = self.ready_at
        return out
