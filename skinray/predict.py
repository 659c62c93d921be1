"""A few images, now: the seed's multi-image prediction, in-process (no Ray), with an optional contact sheet."""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pandas as pd

from skinray import images, inference, metrics
from skinray.model import ModelArtifact
from skinray.storage import StorageConfig


def predict(model_uri: str, image_uris: list[str], storage_cfg: StorageConfig | None = None, engine: str = "onnx",
            tta: bool | None = None, sheet: str | None = None) -> pd.DataFrame:
    """One row per image (``error`` set where it cannot be read); writes a PNG contact sheet when asked."""
    storage_cfg = storage_cfg or StorageConfig()
    artifact = ModelArtifact.open(model_uri, storage_cfg)
    eng = inference.make_engine(artifact, engine)
    tta = inference.resolve_tta(artifact, tta)
    image_cfg = images.image_config_from_spec(artifact.meta["preprocessing"])
    rows: list[dict[str, Any]] = []
    arrays: list[np.ndarray | None] = []
    for uri in image_uris:
        try:
            arrays.append(inference.read_and_decode(uri, storage_cfg, image_cfg))
            rows.append({"image": uri, "error": None})
        except images.ImageError as exc:
            arrays.append(None)
            rows.append({"image": uri, "error": str(exc)[:200]})
    ok = [i for i, a in enumerate(arrays) if a is not None]
    prob = np.full(len(image_uris), np.nan, dtype=np.float32)
    if ok:
        x = np.stack([arrays[i] for i in ok]).astype(np.float32)
        prob[ok] = artifact.calibrate(inference.predict_arrays(eng, x, tta))
    predicted, confidence = inference.label_predictions(prob, artifact.threshold)
    df = pd.DataFrame(rows)
    df.insert(1, "prob_malignant", prob)
    df.insert(2, "predicted", np.where(np.isnan(prob), None, predicted))
    df.insert(3, "confidence", np.where(np.isnan(prob), np.nan, confidence))
    if sheet and ok:
        metrics.contact_sheet(
            [arrays[i] for i in ok],
            [f"{posixpath.basename(image_uris[i])}\n{prob[i]:.2f} {predicted[i]}" for i in ok],
            sheet,
            highlight=[predicted[i] == "malignant" for i in ok],
        )
    return df
