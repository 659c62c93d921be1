"""Training data as the workers see it: rows of the prepared manifest → augmented pixel batches.

Workers read and decode their images in a thread pool with :func:`skinray.images.load` — the function scoring
uses — since on small nodes Ray Data decode tasks would wait for CPUs that the training workers hold. Augmentation
is numpy/PIL on the decode threads, so no random-state variables live inside the distribution strategy.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from skinray import SkinrayError, images
from skinray.config import ImageConfig, SkinrayConfig
from skinray.metrics import CLASS_NAMES
from skinray.storage import StorageConfig

COLUMNS = ["isic_id", "image_uri", "label", "dx_index"]


def augment(img: np.ndarray, rng: np.random.Generator, vertical_flip: bool = False) -> np.ndarray:
    """Rotation ±20°, zoom ±20%, horizontal flip (vertical optional): the seed's augmentation."""
    from PIL import Image

    size = img.shape[0]
    angle = math.radians(rng.uniform(-20, 20))
    zoom = rng.uniform(0.8, 1.2)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    c = size / 2.0
    # inverse affine map: output pixel → input pixel, about the centre
    coeffs = (cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c)
    out = np.asarray(Image.fromarray(img).transform((size, size), Image.Transform.AFFINE, coeffs,
                                                      resample=Image.Resampling.BILINEAR))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if vertical_flip and rng.random() < 0.5:
        out = out[::-1]
    return np.ascontiguousarray(out)


def decode_rows(rows: pd.DataFrame, storage_cfg: StorageConfig, image_cfg: ImageConfig, pool: ThreadPoolExecutor,
                rng: np.random.Generator | None = None, vertical_flip: bool = False) -> np.ndarray:
    """Pixels of ``rows`` (float32, N×S×S×3), augmented when ``rng`` is given."""
    seeds = rng.integers(0, 2**31, size=len(rows)) if rng is not None else [None] * len(rows)

    def one(args: tuple[str, Any]) -> np.ndarray:
        uri, seed = args
        img = images.load(uri, storage_cfg, image_cfg)
        return augment(img, np.random.default_rng(seed), vertical_flip) if seed is not None else img

    return np.stack(list(pool.map(one, zip(rows["image_uri"], seeds)))).astype(np.float32)


def shard_rows(shard: Any) -> pd.DataFrame:
    """All rows of a Ray Data shard (the manifest rows, not pixels: small)."""
    frames = list(shard.iter_batches(batch_size=4096, batch_format="pandas"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in COLUMNS})


def check_splits(df: pd.DataFrame, cfg: SkinrayConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    tr, va = df[df["split"] == "train"], df[df["split"] == "val"]
    if tr.empty:
        raise SkinrayError(f"{cfg.train.prepared}: the train split is empty")
    if tr["label"].nunique() < 2:
        raise SkinrayError(f"{cfg.train.prepared}: the train split has one class only "
                           f"({CLASS_NAMES[int(tr['label'].iloc[0])]}): nothing to learn")
    if len(tr) < cfg.train.workers:
        raise SkinrayError(f"{len(tr)} training images cannot feed {cfg.train.workers} workers")
    if va.empty:
        raise SkinrayError(f"{cfg.train.prepared}: the val split is empty; the threshold is chosen on it")
    return tr, va


def class_weights(labels: pd.Series, mode: str) -> list[float]:
    if mode == "none":
        return [1.0, 1.0]
    counts = labels.value_counts().reindex([0, 1]).fillna(0).to_numpy(float)
    return [float(len(labels) / (2 * max(c, 1.0))) for c in counts]


def dx_codes(frame: pd.DataFrame) -> pd.Series:
    """The rows' diagnoses as the model and the threshold see them: stripped, lower-cased, NA where unknown."""
    if "dx" not in frame:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    return frame["dx"].astype("string").str.strip().str.lower().replace("", pd.NA)


def diagnosis_index(tr: pd.DataFrame, va: pd.DataFrame, weight: float) -> tuple[list[str], pd.DataFrame,
                                                                                  pd.DataFrame]:
    """The diagnosis output's classes (the train split's diagnoses) and a ``dx_index`` column (-1 = none/unknown).

    Off (no classes) when the weight is 0 or the train split records fewer than two diagnoses.
    """
    classes = sorted(dx_codes(tr).dropna().unique().tolist()) if weight > 0 else []
    if len(classes) < 2:
        classes = []
    lookup = {c: i for i, c in enumerate(classes)}

    def index(frame: pd.DataFrame) -> pd.DataFrame:
        codes = dx_codes(frame).map(lambda v: lookup.get(v, -1) if isinstance(v, str) else -1)
        return frame.assign(dx_index=codes.astype(np.int32))

    return classes, index(tr), index(va)


def malignant_diagnoses(tr: pd.DataFrame, classes: list[str]) -> list[bool]:
    """Which diagnoses the binary readout sums as malignant: those whose training rows are mostly labelled
    malignant. Read off the labels, so it agrees with how the manifest's schema labelled them (HAM10000's
    ``manifest.malignant_dx``, ISIC's ``benign_malignant``) instead of a second list to keep in step."""
    share = tr.assign(_dx=dx_codes(tr)).dropna(subset=["_dx"]).groupby("_dx")["label"].mean()
    return [bool(share.get(c, 0.0) >= 0.5) for c in classes]
