"""A few images, now: the seed's multi-image prediction in-process (no Ray), with an optional contact sheet.

It runs the same :class:`skinray.inference.predictor.ImagePredictor` as batch scoring, so a prediction here equals the
score the nightly run gives the same image.
"""

from __future__ import annotations

import os
import posixpath
import tempfile

import numpy as np
import pandas as pd

from skinray import SkinrayError
from skinray.config import ImageConfig, InferenceConfig
from skinray.inference.predictor import ImagePredictor
from skinray.io.storage import StorageConfig
from skinray.render import plots
from skinray.runtime import require_train_extra


def predict(model_uri: str, image_uris: list[str], storage_cfg: StorageConfig | None = None,
            inference: InferenceConfig | None = None, image_guards: ImageConfig | None = None,
            sheet: str | None = None, explain: bool = False) -> pd.DataFrame:
    """One row per image (``error`` set where it cannot be read); writes a PNG contact sheet when asked, with a
    Grad-CAM overlay beside each image when ``explain``.

    Image limits (pixels, bytes) come from ``image_guards`` (the command's config), never from the model file.
    """
    if explain:
        require_train_extra("--explain (Grad-CAM)")
    if sheet:
        check_sheet_path(sheet)
    predictor = ImagePredictor(model_uri, storage_cfg, inference, image_guards or ImageConfig(), threads=0)
    result, decoded = predictor.score_uris(list(image_uris))
    df = pd.concat([pd.DataFrame({"image": list(image_uris)}),
                    result[["prob_malignant", "predicted", "confidence", "dx_pred", "ood_score", "error"]]], axis=1)
    if not predictor.diagnoses:
        df = df.drop(columns=["dx_pred"])
    if predictor.guard is None:  # a model trained before the out-of-distribution guard
        df = df.drop(columns=["ood_score"])
    ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    if sheet and ok:
        captions = [f"{posixpath.basename(image_uris[i])}\n{result['prob_malignant'][i]:.3f} "
                    f"{result['predicted'][i]}" + (f" {result['dx_pred'][i]}" if predictor.diagnoses else "")
                    for i in ok]
        arrays = [decoded[i][0] for i in ok]
        flags = [result["predicted"][i] == "malignant" for i in ok]
        if explain:
            from skinray.model.saliency import GradCam, overlay

            maps = GradCam(predictor.artifact.load_keras())(np.stack(arrays).astype(np.float32))
            arrays = [a for pair in zip(arrays, (overlay(a, m) for a, m in zip(arrays, maps))) for a in pair]
            captions = [c for cap in captions for c in (cap, "Grad-CAM")]
            flags = [f for flag in flags for f in (flag, False)]
        plots.contact_sheet(arrays, captions, sheet, highlight=flags)
    return df


def check_sheet_path(sheet: str) -> None:
    """Before any image is scored: the contact sheet can be written where asked (a local file; its folder is
    created), so that a bad ``--sheet`` is one line, not a traceback after the work is done."""
    if "://" in sheet:
        raise SkinrayError(f"--sheet {sheet}: the contact sheet is written to a local file; give a local path")
    if os.path.isdir(sheet):
        raise SkinrayError(f"--sheet {sheet} is a folder: give a file name, e.g. {os.path.join(sheet, 'sheet.png')}")
    folder = os.path.dirname(os.path.abspath(sheet))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise SkinrayError(f"--sheet {sheet} cannot be written: {existing} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".skinray-sheet-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise SkinrayError(f"--sheet {sheet} cannot be written: {folder}: {exc.strerror or exc}") from exc
