"""Training data as the workers see it: rows of the prepared manifest → augmented pixel batches.

Workers read and decode their images in a thread pool with :func:`skinray.data.images.load` — the function scoring
uses — since on small nodes Ray Data decode tasks would wait for CPUs that the training workers hold. Augmentation
is numpy/PIL on the decode threads, so no random-state variables live inside the distribution strategy.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from skinray import SkinrayError
from skinray.config import ImageConfig, SkinrayConfig
from skinray.data import images
from skinray.decision.metrics import CLASS_NAMES
from skinray.io.storage import StorageConfig

COLUMNS = ["isic_id", "image_uri", "label", "dx_index"]


def augment(img: np.ndarray, rng: np.random.Generator, vertical_flip: bool = False,
            photometric: bool = False) -> np.ndarray:
    """Rotation ±20°, zoom ±20%, horizontal flip (vertical optional): the seed's augmentation.

    ``photometric`` adds what differs between dermoscopes, lighting and hands: a shift of up to 10%, brightness
    and contrast ±20%, saturation ±20% and hue ±0.05 turn, a Gaussian blur (p 0.2) and one cutout (p 0.5).
    """
    from PIL import Image, ImageFilter

    size = img.shape[0]
    angle = math.radians(rng.uniform(-20, 20))
    zoom = rng.uniform(0.8, 1.2)
    dx, dy = (rng.uniform(-0.1, 0.1, 2) * size) if photometric else (0.0, 0.0)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    c = size / 2.0
    # inverse affine map: output pixel → input pixel, about the centre
    coeffs = (cos, -sin, c - cos * c + sin * c + dx, sin, cos, c - sin * c - cos * c + dy)
    pil = Image.fromarray(img).transform((size, size), Image.Transform.AFFINE, coeffs,
                                         resample=Image.Resampling.BILINEAR)
    if photometric and rng.random() < 0.2:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.5, 1.5)))
    out = np.asarray(pil)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if vertical_flip and rng.random() < 0.5:
        out = out[::-1]
    if photometric:
        out = _photometric(out, rng)
    return np.ascontiguousarray(out)


# RGB → YIQ and back: hue is a rotation of the (I, Q) plane, saturation its length
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_RGB = np.linalg.inv(_YIQ).astype(np.float32)


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    theta = 2 * math.pi * rng.uniform(-0.05, 0.05)
    sat = rng.uniform(0.8, 1.2)
    rot = np.array([[1, 0, 0], [0, math.cos(theta), -math.sin(theta)], [0, math.sin(theta), math.cos(theta)]],
                   np.float32)
    colour = _RGB @ (np.diag([1.0, sat, sat]).astype(np.float32) @ rot) @ _YIQ
    x = x @ colour.T
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.8, 1.2)  # contrast about the mean, brightness
    if rng.random() < 0.5:  # one cutout, a quarter of the side, filled with the image's mean colour
        side = img.shape[0] // 4
        top, left = rng.integers(0, img.shape[0] - side + 1, 2)
        x[top:top + side, left:left + side] = x.reshape(-1, 3).mean(axis=0)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def decode_rows(rows: pd.DataFrame, storage_cfg: StorageConfig, image_cfg: ImageConfig, pool: ThreadPoolExecutor,
                rng: np.random.Generator | None = None, vertical_flip: bool = False,
                photometric: bool = False) -> np.ndarray:
    """Pixels of ``rows`` (float32, N×S×S×3), augmented when ``rng`` is given."""
    seeds = rng.integers(0, 2**31, size=len(rows)) if rng is not None else [None] * len(rows)

    def one(args: tuple[str, Any]) -> np.ndarray:
        uri, seed = args
        img = images.load(uri, storage_cfg, image_cfg)
        return augment(img, np.random.default_rng(seed), vertical_flip, photometric) if seed is not None else img

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


def source_counts(fit_rows: pd.DataFrame, held_rows: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Images (and malignant ones) of each source the model trained on and fitted its operating point on: what its
    figures can speak for (the model card)."""
    out: dict[str, dict[str, int]] = {}
    for key, rows in (("trained_on", fit_rows), ("held_out", held_rows)):
        for name, part in rows.groupby(rows["source"].astype("string").fillna("unnamed"), sort=True):
            entry = out.setdefault(str(name), {"trained_on": 0, "trained_on_malignant": 0, "held_out": 0})
            entry[key] = int(len(part))
            if key == "trained_on":
                entry["trained_on_malignant"] = int(part["label"].sum())
    return out
