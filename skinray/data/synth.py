"""Deterministic synthetic dermoscopy-like data: images + ISIC/HAM10000-style metadata.

Why: the demo, the tests and the benchmarks need a data set with the shape of the real ones (JPEGs named by id,
a metadata CSV, several images per lesion, a few broken or missing files) without shipping or downloading real
patient images. Everything is derived from ``seed``: the same call writes byte-identical files.

Images are 4:3 (``width = size``, ``height = round(0.75 * size)``), like most dermoscopes (HAM10000 is 600x450).
Each shows skin with texture, a round dermoscope field of view with dark corners, a few hairs and one pigmented
lesion. A latent "malignancy" score ~ N(+0.8, 1) for malignant and N(-0.8, 1) for benign lesions drives size,
asymmetry, border irregularity, colour count and darkness, so the classes overlap: learnable, not trivial.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from skinray import SkinrayError
from skinray.data.synth_render import ASPECT, jpeg_bytes, pick, render, sample_lesion
from skinray.io import storage as _storage
from skinray.io.storage import StorageConfig

# ---------------------------------------------------------------------------------------------------------------
# Constants: palettes (RGB), vocabularies, rates.
# ---------------------------------------------------------------------------------------------------------------

UPLOAD_THREADS = 8
ID_PREFIX = "SYN_"  # never "ISIC_": real archive ids must not appear in synthetic data
LESION_PREFIX = "SYNL_"
SCHEMAS = ("isic", "ham10000")
MISSING_AGE_RATE = 0.03
MISSING_SITE_RATE = 0.05
MISSING_SEX_RATE = 0.02

# (diagnosis, weight) per class. HAM dx codes: nv bkl df vasc benign; mel bcc akiec malignant.
ISIC_BENIGN = (("nevus", 70), ("seborrheic keratosis", 10), ("pigmented benign keratosis", 8),
               ("solar lentigo", 5), ("dermatofibroma", 4), ("vascular lesion", 3))  # fmt: skip
ISIC_MALIGNANT = (("melanoma", 65), ("basal cell carcinoma", 25), ("squamous cell carcinoma", 10))
HAM_BENIGN = (("nv", 80), ("bkl", 13), ("df", 3), ("vasc", 4))
HAM_MALIGNANT = (("mel", 60), ("bcc", 27), ("akiec", 13))
HAM_DX_TYPE_BENIGN = (("follow_up", 45), ("histo", 35), ("consensus", 18), ("confocal", 2))
HAM_DX_TYPE_MALIGNANT = (("histo", 92), ("consensus", 6), ("confocal", 2))

ISIC_SITES = (("anterior torso", 22), ("posterior torso", 25), ("lower extremity", 20), ("upper extremity", 13),
              ("head/neck", 11), ("palms/soles", 3), ("oral/genital", 1), ("lateral torso", 5))  # fmt: skip
HAM_SITES = (("back", 22), ("lower extremity", 21), ("trunk", 14), ("upper extremity", 11), ("abdomen", 10),
             ("face", 7), ("chest", 4), ("foot", 3), ("unknown", 2), ("neck", 2), ("scalp", 1.3), ("hand", 1),
             ("ear", 0.6), ("genital", 0.5), ("acral", 0.1))  # fmt: skip

ISIC_COLUMNS = ("isic_id", "benign_malignant", "diagnosis", "age_approx", "sex", "anatom_site_general", "lesion_id")
HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")

CORRUPT_KINDS = ("truncated", "empty", "random_bytes", "text")
CORRUPT_TEXT = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>\n"
)


# ---------------------------------------------------------------------------------------------------------------
# Data set plan: lesions, labels, metadata, broken rows.
# ---------------------------------------------------------------------------------------------------------------


def _whole(x: object, minimum: int) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= minimum


def _real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _validate(n: int, image_size: int, schema: str, malignant_fraction: float, corrupt: int, missing: int,
              images_per_lesion: float, seed: int) -> None:  # fmt: skip
    """Reject arguments that would produce a useless or ill-defined data set, with a message saying which."""
    if schema not in SCHEMAS:
        raise SkinrayError(f"unknown schema {schema!r}: use one of {', '.join(SCHEMAS)}")
    if not _whole(n, 1):
        raise SkinrayError(f"n must be a whole number >= 1, got {n!r}")
    if not _whole(image_size, 32):
        raise SkinrayError(f"image_size must be a whole number >= 32, got {image_size!r}")
    if not (_real(malignant_fraction) and 0 < malignant_fraction < 1):
        raise SkinrayError(f"malignant_fraction must be strictly between 0 and 1, got {malignant_fraction!r}")
    if not (_whole(corrupt, 0) and _whole(missing, 0)):
        raise SkinrayError(f"corrupt and missing must be whole numbers >= 0, got {corrupt!r} and {missing!r}")
    if corrupt + missing >= n:
        raise SkinrayError(f"corrupt + missing ({corrupt + missing}) must be less than n ({n})")
    if not (_real(images_per_lesion) and images_per_lesion >= 1):
        raise SkinrayError(f"images_per_lesion must be a finite number >= 1, got {images_per_lesion!r}")
    if not _whole(seed, 0):
        raise SkinrayError(f"seed must be a whole number >= 0, got {seed!r}")


def _group_lesions(rng: np.random.Generator, n: int, images_per_lesion: float) -> list[int]:
    """Sizes of consecutive image groups (one group = one lesion), mean about ``images_per_lesion``."""
    sizes: list[int] = []
    left = n
    while left > 0:
        k = min(left, 1 + int(rng.poisson(images_per_lesion - 1)))
        sizes.append(k)
        left -= k
    return sizes


def _assign_labels(rng: np.random.Generator, sizes: list[int], fraction: float) -> list[bool]:
    """Malignant lesions chosen so the malignant *image* count is as close as possible to ``fraction * n``."""
    n = sum(sizes)
    target = int(round(fraction * n))
    if n >= 2:
        target = min(max(target, 1), n - 1)  # both classes present whenever possible
    labels = [False] * len(sizes)
    count = 0
    for j in rng.permutation(len(sizes)):
        if count + sizes[j] <= target:
            labels[j] = True
            count += sizes[j]
    return labels


def _age(rng: np.random.Generator, malignant: bool) -> int:
    mean, sd = (63, 14) if malignant else (46, 17)
    return int(np.clip(5 * round(rng.normal(mean, sd) / 5), 5, 85))


def _lesion_meta(rng: np.random.Generator, schema: str, malignant: bool) -> dict[str, str]:
    """Metadata shared by every image of one lesion, already formatted as CSV cells ('' = missing)."""
    age = "" if rng.uniform() < MISSING_AGE_RATE else _age(rng, malignant)
    site_missing = rng.uniform() < MISSING_SITE_RATE
    male = rng.uniform() < (0.58 if malignant else 0.52)
    sex = "" if rng.uniform() < MISSING_SEX_RATE else ("male" if male else "female")
    if schema == "isic":
        return {
            "benign_malignant": "malignant" if malignant else "benign",
            "diagnosis": pick(rng, ISIC_MALIGNANT if malignant else ISIC_BENIGN),
            "age_approx": str(age),
            "sex": sex,
            "anatom_site_general": "" if site_missing else pick(rng, ISIC_SITES),
        }
    return {
        "dx": pick(rng, HAM_MALIGNANT if malignant else HAM_BENIGN),
        "dx_type": pick(rng, HAM_DX_TYPE_MALIGNANT if malignant else HAM_DX_TYPE_BENIGN),
        "age": "" if age == "" else f"{float(age):.1f}",
        "sex": sex or "unknown",
        "localization": "" if site_missing else pick(rng, HAM_SITES),
    }


def _corrupt_bytes(kind: str, rng: np.random.Generator, good: bytes) -> bytes:
    """Bytes for a broken image file of the given kind."""
    if kind == "truncated":
        return good[: int(len(good) * 0.4)]
    if kind == "empty":
        return b""
    if kind == "random_bytes":
        data = bytearray(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
        data[0] = 0  # never a valid image signature by chance
        return bytes(data)
    return CORRUPT_TEXT


def _plan_broken(plan: np.random.Generator, n: int, corrupt: int, missing: int
                 ) -> tuple[list[int], list[int], dict[int, str]]:
    """The planted faults: (rows with an undecodable file, rows without a file, the kind of each undecodable one)."""
    broken = plan.permutation(n)
    corrupt_idx = sorted(int(i) for i in broken[:corrupt])
    missing_idx = sorted(int(i) for i in broken[corrupt : corrupt + missing])
    kind_offset = int(plan.integers(len(CORRUPT_KINDS)))
    corrupt_kind = {i: CORRUPT_KINDS[(j + kind_offset) % len(CORRUPT_KINDS)] for j, i in enumerate(corrupt_idx)}
    return corrupt_idx, missing_idx, corrupt_kind


def _write_images(images_uri: str, sizes: list[int], labels: list[bool], schema: str, id_col: str, image_size: int,
                  seed: int, corrupt_kind: dict[int, str], missing: set[int], cfg: StorageConfig | None
                  ) -> list[dict[str, str]]:
    """Every image file, lesion by lesion (a missing row's stale file from an earlier run deleted), uploaded by a
    bounded pool of threads; returns the metadata rows in image order."""
    rows: list[dict[str, str]] = []
    pending: deque[Future] = deque()
    i = 0
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        for j, (k, malignant) in enumerate(zip(sizes, labels)):
            lesion_id = f"{LESION_PREFIX}{j:07d}"
            meta = _lesion_meta(np.random.default_rng([seed, 1, j]), schema, malignant)
            lesion = sample_lesion(np.random.default_rng([seed, 2, j]), malignant)
            for _ in range(k):
                image_id = f"{ID_PREFIX}{i:07d}"
                rows.append({id_col: image_id, "lesion_id": lesion_id, **meta})
                uri = _storage.join(images_uri, f"{image_id}.jpg")
                if i in missing:
                    pending.append(pool.submit(_storage.delete, uri, cfg))  # a stale file from an earlier run
                else:
                    rng = np.random.default_rng([seed, 3, i])
                    data = jpeg_bytes(render(lesion, rng, image_size))
                    if i in corrupt_kind:
                        data = _corrupt_bytes(corrupt_kind[i], rng, data)
                    pending.append(pool.submit(_storage.write_bytes, uri, data, cfg))
                while len(pending) > 4 * UPLOAD_THREADS:  # bounded memory; re-raises upload errors early
                    pending.popleft().result()
                i += 1
        while pending:
            pending.popleft().result()
    return rows


def _csv_text(columns: tuple[str, ...], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------------------


def generate(
    out_uri: str,
    n: int,
    image_size: int = 128,
    schema: str = "isic",
    malignant_fraction: float = 0.2,
    seed: int = 0,
    corrupt: int = 0,
    missing: int = 0,
    images_per_lesion: float = 1.4,
    storage: StorageConfig | None = None,
) -> dict:
    """Write ``n`` synthetic images to ``{out_uri}/images/`` and ``{out_uri}/metadata.csv`` (local or s3://).

    Why: a stand-in for ISIC / HAM10000 with the same layout, including the awkward parts (several images per
    lesion, empty metadata cells, ``corrupt`` undecodable files and ``missing`` rows without a file) so the
    pipeline's handling of them can be tested. Same arguments -> byte-identical output. The CSV is written last.
    Returns a summary: counts, the ids of planted corrupt/missing rows and the output URIs.
    """
    _validate(n, image_size, schema, malignant_fraction, corrupt, missing, images_per_lesion, seed)
    n, image_size, corrupt, missing, seed = int(n), int(image_size), int(corrupt), int(missing), int(seed)
    cfg = storage  # a StorageConfig (or None); the module is _storage
    plan = np.random.default_rng([seed, 0])

    sizes = _group_lesions(plan, n, images_per_lesion)
    labels = _assign_labels(plan, sizes, malignant_fraction)
    corrupt_idx, missing_idx, corrupt_kind = _plan_broken(plan, n, corrupt, missing)

    id_col = "isic_id" if schema == "isic" else "image_id"
    columns = ISIC_COLUMNS if schema == "isic" else HAM_COLUMNS
    images_uri = _storage.join(out_uri, "images")
    rows = _write_images(images_uri, sizes, labels, schema, id_col, image_size, seed, corrupt_kind,
                         set(missing_idx), cfg)

    metadata_uri = _storage.join(out_uri, "metadata.csv")
    _storage.write_text(metadata_uri, _csv_text(columns, rows), cfg)
    ids = [r[id_col] for r in rows]
    n_malignant = sum(k for k, m in zip(sizes, labels) if m)
    return {
        "schema": schema,
        "n": n,
        "malignant": n_malignant,
        "benign": n - n_malignant,
        "lesions": len(sizes),
        "corrupt": corrupt,
        "missing": missing,
        "corrupt_ids": [ids[i] for i in corrupt_idx],
        "missing_ids": [ids[i] for i in missing_idx],
        "corrupt_kinds": {ids[i]: corrupt_kind[i] for i in corrupt_idx},
        "id_column": id_col,
        "width": image_size,
        "height": int(round(image_size * ASPECT)),
        "seed": seed,
        "paths": {"root": out_uri, "metadata": metadata_uri, "images": images_uri},
    }
