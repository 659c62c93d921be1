"""The one place where a URI becomes pixels: used by prepare (checks), train, evaluate, score and predict.

Train/serve skew is the classic bug of this field, so the model directory records its preprocessing
(:class:`skinray.model.artifact.Preprocessing`) and every consumer calls :func:`decode` with it. Scaling to MobileNetV2's
[-1, 1] lives inside the model itself. Every failure is an :class:`ImageError` with a short reason code.
"""

from __future__ import annotations

import io
import random
import time
import warnings
from typing import Any

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, ImageOps, UnidentifiedImageError

from skinray.config import ImageConfig
from skinray.io import paths, storage
from skinray.io.storage import StorageConfig

# Our own pixel limit is checked first; PIL's bomb error stays as a second guard.
Image.MAX_IMAGE_PIXELS = None


def row_error(reason: str, detail: str = "") -> str:
    """A row's ``error`` text: its reason code, then what happened (``reason: detail``); :func:`error_reasons` reads
    the code back."""
    return f"{reason}: {detail}" if detail else reason


def error_reasons(errors: Any) -> Any:
    """The reason code of each :func:`row_error` text in ``errors`` (a pandas Series); a row without one stays
    missing."""
    return errors.astype("string").str.split(":").str[0].astype(object)


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is a short stable code stored in rejects and score errors."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(row_error(reason, detail))
        self.reason = reason
        self.detail = detail


RETRYABLE_REASONS = ("unreachable",)  # a row with this error is not a result: the next submit reads it again


def read_image_bytes(uri: str, storage_cfg: StorageConfig, cfg: ImageConfig, root: str | None = None) -> bytes:
    """The bytes of one image URI, or :class:`ImageError` with the reason every stage records.

    ``unsafe_path`` (a local file whose real path leaves ``root``, e.g. through a symlink), ``missing`` (no such
    file), ``not_image`` (a directory), ``too_large`` (checked from the listing, before a single byte is read),
    ``unreadable`` (anything else the storage refuses) are final. A read that fails for a passing reason
    (throttling, a dropped connection: ``storage.is_transient``) is tried ``storage.read_attempts`` times with
    doubling backoff, then is ``unreachable``: retryable, never committed as a result.
    """
    if root and not storage.is_s3(uri) and not paths.inside(storage.normalize(root), storage.normalize(uri)):
        raise ImageError("unsafe_path", f"{uri} resolves outside {root}")
    fs, path = storage.filesystem(uri, storage_cfg)
    for attempt in range(storage_cfg.read_attempts):
        try:
            return _read(fs, path, uri, cfg)
        except OSError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not storage.is_transient(exc):
                reason = "missing" if "not found" in msg.lower() or "no such file" in msg.lower() else "unreadable"
                raise ImageError(reason, msg) from exc
            if attempt + 1 == storage_cfg.read_attempts:
                raise ImageError("unreachable", f"{msg} ({storage_cfg.read_attempts} tries)") from exc
            time.sleep(storage_cfg.retry_base_seconds * 2 ** attempt * (0.5 + random.random()))
    raise AssertionError("unreachable code")  # the loop returns or raises


def _read(fs: Any, path: str, uri: str, cfg: ImageConfig) -> bytes:
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ImageError("missing", uri)
        if info.type != pafs.FileType.File:
            raise ImageError("not_image", f"{uri} is not a file")
        if info.size is not None and info.size > cfg.max_bytes:
            raise ImageError("too_large", f"{info.size} bytes > {cfg.max_bytes}")
        with fs.open_input_stream(path) as f:
            return f.read(cfg.max_bytes + 1)
    except FileNotFoundError as exc:
        raise ImageError("missing", uri) from exc


def _open(data: bytes, cfg: ImageConfig) -> Image.Image:
    if not data:
        raise ImageError("empty", "zero-byte file")
    if len(data) > cfg.max_bytes:
        raise ImageError("too_large", f"{len(data)} bytes > {cfg.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageError("not_image", "not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_many_pixels", str(exc)) from exc
    except Exception as exc:  # PIL raises many types on garbage headers
        raise ImageError("undecodable", f"{type(exc).__name__}: {exc}") from exc
    w, h = img.size
    if w * h > cfg.max_pixels:
        raise ImageError("too_many_pixels", f"{w}x{h} > {cfg.max_pixels} pixels")
    if w < 1 or h < 1:
        raise ImageError("undecodable", "zero-size image")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if (mode.startswith("I;16") or arr.max() > 255) else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _resize(img: Image.Image, size: int, mode: str) -> Image.Image:
    w, h = img.size
    if mode == "center_crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    elif mode == "pad":
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (0, 0, 0))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return img


SHADES_OF_GRAY_P = 6


def shades_of_gray(arr: np.ndarray, p: int = SHADES_OF_GRAY_P) -> np.ndarray:
    """Colour constancy (Finlayson & Trezzi 2004): estimate the illuminant as each channel's Minkowski p-mean and
    rescale the channels so that it becomes neutral grey of the same brightness; ``uint8`` in, ``uint8`` out."""
    x = arr.astype(np.float32)
    unit = x.reshape(-1, 3) / 255.0
    illuminant = np.power(np.mean(unit ** p, axis=0, dtype=np.float64), 1.0 / p)
    if not np.all(illuminant > 0):  # a black channel has no colour cast to remove
        return arr
    gain = illuminant.mean() / illuminant
    return np.clip(x * gain + 0.5, 0, 255).astype(np.uint8)


def mean_color(arr: np.ndarray) -> np.ndarray:
    """Mean (R, G, B) of a ``uint8`` image, exactly ``arr.reshape(-1, 3).mean(axis=0)`` at a sixth of its cost: the
    drift columns of every scored image are computed on the scoring actors' time."""
    planes = np.ascontiguousarray(arr.reshape(-1, 3).T)
    return planes.sum(axis=1, dtype=np.uint64) / planes.shape[1]


def load(uri: str, storage_cfg: StorageConfig, cfg: ImageConfig, root: str | None = None) -> np.ndarray:
    """One image URI → decoded ``uint8`` array; every failure is an :class:`ImageError` with a reason."""
    return decode(read_image_bytes(uri, storage_cfg, cfg, root), cfg)


def load_sized(uri: str, storage_cfg: StorageConfig, cfg: ImageConfig, root: str | None = None
               ) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load`, and the image's stored (width, height): scoring records both (drift, image QA)."""
    return decode_sized(read_image_bytes(uri, storage_cfg, cfg, root), cfg)


def decode(data: bytes, cfg: ImageConfig) -> np.ndarray:
    """Bytes → ``uint8`` array (size, size, 3), or :class:`ImageError` with a reason code."""
    return decode_sized(data, cfg)[0]


def decode_sized(data: bytes, cfg: ImageConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`decode`, and the (width, height) stored in the file, before resizing."""
    img = _open(data, cfg)
    stored = img.size
    try:
        if img.format == "JPEG":
            # Decode at a reduced DCT scale that is still >= the target size: 2-4x faster on large photos.
            target = (cfg.size, cfg.size)
            if cfg.resize == "center_crop":
                short = min(img.size)
                scale = cfg.size / short
                target = (int(img.size[0] * scale) + 1, int(img.size[1] * scale) + 1)
            img.draft("RGB", target)
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        img = _resize(img, cfg.size, cfg.resize)
        arr = np.asarray(img, dtype=np.uint8)
        if cfg.color_constancy == "shades_of_gray":
            arr = shades_of_gray(arr)
    except ImageError:
        raise
    except Exception as exc:  # truncated data, bad Huffman tables, broken PNG chunks...
        raise ImageError("undecodable", f"{type(exc).__name__}: {exc}") from exc
    if arr.shape != (cfg.size, cfg.size, 3):
        raise ImageError("undecodable", f"unexpected decoded shape {arr.shape}")
    return arr, stored


def check(data: bytes, cfg: ImageConfig) -> tuple[str | None, int | None, int | None]:
    """(reason or None, width, height): a full but cheap decode (reduced DCT scale for JPEG).

    ``Image.verify`` alone misses truncated files, so the pixels are really decoded.
    """
    try:
        img = _open(data, cfg)
        w, h = img.size
        if img.format == "JPEG":
            img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
        img.load()
        _to_rgb(img)
    except ImageError as exc:
        return exc.reason, None, None
    except Exception:
        return "undecodable", None, None
    return None, w, h
