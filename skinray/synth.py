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
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from skinray import SkinrayError
from skinray import storage as _storage  # the name `storage` is generate()'s config parameter
from skinray.storage import StorageConfig

# ---------------------------------------------------------------------------------------------------------------
# Constants: palettes (RGB), vocabularies, rates.
# ---------------------------------------------------------------------------------------------------------------

ASPECT = 0.75  # height / width, as in real dermoscopy images
JPEG_QUALITY = 90
UPLOAD_THREADS = 8
ID_PREFIX = "SYN_"  # never "ISIC_": real archive ids must not appear in synthetic data
LESION_PREFIX = "SYNL_"
SCHEMAS = ("isic", "ham10000")

LATENT_MEAN = 0.8  # latent malignancy score ~ N(+-LATENT_MEAN, 1)
MISSING_AGE_RATE = 0.03
MISSING_SITE_RATE = 0.05
MISSING_SEX_RATE = 0.02

SKIN_TONES = np.array(
    [
        (236, 196, 178),
        (230, 182, 160),
        (224, 170, 150),
        (218, 165, 160),  # pinkish, the usual look under polarised light
        (212, 158, 130),
        (196, 140, 110),
        (170, 118, 88),
    ],
    dtype=np.float32,
)
LIGHT_BROWN = np.array((176, 118, 86), dtype=np.float32)
DARK_BROWN = np.array((96, 58, 44), dtype=np.float32)
HAIR_COLOUR = np.array((38, 28, 24), dtype=np.float32)
FOV_COLOUR = np.array((10, 9, 9), dtype=np.float32)  # outside the dermoscope's round field of view

# Extra colour patches; malignant lesions draw more of them and more often the non-brown ones.
PATCH_COLOURS = {
    "light brown": (178, 120, 82),
    "dark brown": (82, 46, 30),
    "black": (30, 22, 22),
    "blue-grey": (96, 106, 128),
    "red": (178, 74, 72),
    "white": (214, 196, 192),
}
PATCH_NAMES = tuple(PATCH_COLOURS)
PATCH_RGB = np.array([PATCH_COLOURS[k] for k in PATCH_NAMES], dtype=np.float32)
PATCH_WEIGHTS_BENIGN = np.array([5, 4, 0.4, 0.3, 0.3, 0.2])
PATCH_WEIGHTS_MALIGNANT = np.array([2, 3, 2.5, 2.5, 1.5, 0.8])

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
# Rendering
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lesion:
    """What stays fixed across the images of one lesion (the per-image render varies pose, light, hairs)."""

    malignant: bool
    score: float  # latent malignancy score
    radius: float  # as a fraction of image width
    elongation: float
    harmonics: np.ndarray  # (K, 2): amplitude, phase of border harmonics k = 1..K
    edge: float  # border blur width, in lesion radii
    base: np.ndarray  # RGB
    profile: float  # >0: darker centre, <0: darker rim
    network: float  # pigment-network texture strength
    patches: tuple[tuple[float, float, float, float, int], ...]  # x, y, sigma (lesion radii), strength, colour idx
    dots: tuple[tuple[float, float, float], ...]  # x, y (lesion radii), size (radii)
    skin: np.ndarray  # RGB
    hairiness: float


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _pick(rng: np.random.Generator, table: tuple[tuple[str, float], ...]) -> str:
    """One name from a (name, weight) table."""
    weights = np.array([w for _, w in table], dtype=float)
    return table[int(rng.choice(len(table), p=weights / weights.sum()))][0]


def _sample_lesion(rng: np.random.Generator, malignant: bool) -> _Lesion:
    """Draw a lesion's traits from the latent score, each with its own noise, so no single trait decides."""
    z = float(rng.normal(LATENT_MEAN if malignant else -LATENT_MEAN, 1.0))
    s = _sigmoid(1.5 * z)  # 0..1 "how atypical"
    radius = float(np.clip(0.15 + 0.035 * z + rng.normal(0, 0.025), 0.07, 0.34))
    elongation = float(min(1.0 + abs(rng.normal(0, 0.06 + 0.12 * s)), 1.7))
    k = np.arange(1, 13)
    # Low harmonics: asymmetry; high harmonics: ragged, notched border.
    sd = np.where(k <= 3, 0.03 + 0.10 * s, (0.006 + 0.05 * s) / np.sqrt(np.maximum(k - 2, 1)))
    harmonics = np.stack([rng.normal(0, sd), rng.uniform(0, 2 * np.pi, len(k))], axis=1)
    edge = float(np.clip(0.32 - 0.07 * z + rng.normal(0, 0.06), 0.06, 0.5))
    darkness = float(np.clip(0.45 + 0.15 * z + rng.normal(0, 0.15), 0.0, 1.0))
    base = (1 - darkness) * LIGHT_BROWN + darkness * DARK_BROWN
    base = base + rng.normal(0, 8) * np.array((1.0, 0.8, 0.6)) + rng.normal(0, 3, 3)  # keep hue brown
    n_patches = int(min(rng.poisson(max(0.3, 0.7 + 1.3 * z)), 6))
    weights = (1 - s) * PATCH_WEIGHTS_BENIGN + s * PATCH_WEIGHTS_MALIGNANT
    patches = []
    for _ in range(n_patches):
        r, a = 0.75 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        patches.append((r * math.cos(a), r * math.sin(a), float(rng.uniform(0.15, 0.45)),
                        float(rng.uniform(0.5, 0.9)), int(rng.choice(len(PATCH_NAMES), p=weights / weights.sum()))))
    spread = 0.35 + 0.55 * s  # atypical: globules scattered out to the rim
    dots = []
    for _ in range(int(rng.poisson(1.5 + 5 * s))):
        r, a = spread * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        dots.append((r * math.cos(a), r * math.sin(a), float(rng.uniform(0.03, 0.06 + 0.05 * s))))
    return _Lesion(
        malignant=malignant,
        score=z,
        radius=radius,
        elongation=elongation,
        harmonics=harmonics,
        edge=edge,
        base=base.astype(np.float32),
        profile=float(rng.normal(0.1, 0.15)),
        network=float(np.clip(0.07 + 0.10 * s + rng.normal(0, 0.03), 0.02, 0.3)),
        patches=tuple(patches),
        dots=tuple(dots),
        skin=(SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 7, 3)).astype(np.float32),
        hairiness=float(rng.choice([0.3, 1.5, 4.0], p=[0.4, 0.4, 0.2])),
    )


def _noise(rng: np.random.Generator, w: int, h: int, cells: float) -> np.ndarray:
    """Smooth value noise (about unit scale) with ``cells`` features across the width: cheap bicubic upsampling."""
    gw = max(2, int(round(cells)))
    gh = max(2, int(round(cells * h / w)))
    grid = Image.fromarray(rng.standard_normal((gh + 2, gw + 2)).astype(np.float32))
    up = grid.resize((w, h), Image.Resampling.BICUBIC, box=(1, 1, gw + 1, gh + 1))
    return np.asarray(up, dtype=np.float32)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _draw_hairs(rng: np.random.Generator, lesion: _Lesion, w: int, h: int) -> np.ndarray:
    """A 0..1 mask of thin, gently curved hairs."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    scale = w / 128.0
    t = np.linspace(0.0, 1.0, 9)[:, None]
    for _ in range(int(rng.poisson(lesion.hairiness))):
        p0 = rng.uniform((-0.1 * w, -0.1 * h), (1.1 * w, 1.1 * h))
        a = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.3, 0.9) * w
        p2 = p0 + length * np.array((math.cos(a), math.sin(a)))
        bend = rng.normal(0, 0.15) * length * np.array((-math.sin(a), math.cos(a)))
        p1 = (p0 + p2) / 2 + bend
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier
        width = max(1, int(round(rng.uniform(0.5, 1.5) * scale)))
        draw.line([tuple(p) for p in pts.tolist()], fill=int(rng.uniform(170, 255)), width=width, joint="curve")
    mask = mask.filter(ImageFilter.GaussianBlur(0.35 * scale))
    return np.asarray(mask, dtype=np.float32) / 255.0


def _render(lesion: _Lesion, rng: np.random.Generator, size: int) -> Image.Image:
    """One photograph of ``lesion``: pose, zoom, light, field of view, hairs and noise come from ``rng``."""
    w, h = size, max(1, int(round(size * ASPECT)))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)

    # Skin: base tone, blotchy redness, fine texture.
    skin = lesion.skin * (1 + rng.normal(0, 0.03, 3)).astype(np.float32)
    tex = 0.035 * _noise(rng, w, h, 5) + 0.03 * _noise(rng, w, h, 28)
    red = np.maximum(_noise(rng, w, h, 4), 0) * 0.06
    img = skin[None, None, :] * (1 + tex)[..., None]
    img[..., 1:] *= (1 - red)[..., None]

    # Lesion frame: rotated, zoomed, elongated coordinates in lesion radii.
    cx = w * (0.5 + rng.normal(0, 0.04))
    cy = h / 2 + w * rng.normal(0, 0.03)
    rad = lesion.radius * w * rng.uniform(0.9, 1.1)
    rot = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(rot), math.sin(rot)
    dx, dy = (x - cx) / rad, (y - cy) / rad
    u, v = c * dx + s * dy, -s * dx + c * dy
    ue = u / lesion.elongation
    d0 = np.maximum(np.hypot(ue, v), 1e-6)
    # Border radius r(theta) = 1 + sum_k a_k cos(k theta + phi_k), via powers of e^{i theta} (no trig per pixel).
    e = ((ue + 1j * v) / d0).astype(np.complex64)
    ek = e.copy()
    border = np.ones_like(d0)
    for amp, phase in lesion.harmonics:
        border += (ek * complex(amp * math.cos(phase), amp * math.sin(phase))).real
        ek *= e
    d = d0 * (1 + 0.02 * _noise(rng, w, h, 10))
    alpha = _smoothstep(0.5 + (border - d) / lesion.edge)

    # Lesion colour: base brown with a radial profile, pigment network, colour patches.
    shade = 1 + lesion.profile * (0.5 - np.minimum(d, 1.2)) - lesion.network * _noise(rng, w, h, max(8, w / 6))
    col = lesion.base[None, None, :] * shade[..., None]
    for px, py, sig, strength, idx in lesion.patches:
        wgt = strength * np.exp(-((u - px) ** 2 + (v - py) ** 2) / (2 * sig * sig))
        col += wgt[..., None] * (PATCH_RGB[idx] - col)
    img += alpha[..., None] * (col - img)

    # Dots / globules.
    if lesion.dots:
        dots = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(dots)
        for px, py, r in lesion.dots:
            qx, qy = px * lesion.elongation, py
            gx, gy = cx + rad * (c * qx - s * qy), cy + rad * (s * qx + c * qy)
            rr = max(0.6, r * rad)
            draw.ellipse((gx - rr, gy - rr, gx + rr, gy + rr), fill=int(rng.uniform(140, 230)))
        dm = np.asarray(dots.filter(ImageFilter.GaussianBlur(0.4 * w / 128)), dtype=np.float32) / 255.0
        img += dm[..., None] * (DARK_BROWN * 0.6 - img)

    # Hairs over everything.
    hair = _draw_hairs(rng, lesion, w, h)
    img += hair[..., None] * (HAIR_COLOUR * rng.uniform(0.8, 1.3) - img)

    # Light: exposure, colour cast, gradient, dermoscope field of view with a dark surround.
    gain = rng.uniform(0.9, 1.08) * (1 + rng.normal(0, 0.015, 3)).astype(np.float32)
    ga, gs = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.12)
    light = 1 + gs * ((x / w - 0.5) * math.cos(ga) + (y / w - 0.5) * math.sin(ga))
    fx, fy = w / 2 + w * rng.normal(0, 0.03), h / 2 + w * rng.normal(0, 0.03)
    fr = w * rng.uniform(0.48, 0.8)  # >0.625: only the corners are dark
    fd = np.hypot(x - fx, y - fy) / fr
    light *= 1 - rng.uniform(0.1, 0.3) * fd**2
    inside = _smoothstep((1 - fd) * fr / (w * rng.uniform(0.015, 0.05)))
    img = img * (light * inside)[..., None] * gain + (1 - inside)[..., None] * FOV_COLOUR
    img += 2.5 * rng.standard_normal(img.shape, dtype=np.float32)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))  # HxWx3 uint8 -> RGB


def render_lesion(rng: np.random.Generator, malignant: bool, size: int) -> Image.Image:
    """One synthetic dermoscopy image, ``size`` wide and ``round(0.75 * size)`` high (4:3), for tests and demos.

    Malignant lesions are on average larger, more asymmetric, more ragged and more multi-coloured; the traits come
    from overlapping distributions, so a single image's class is not certain.
    """
    return _render(_sample_lesion(rng, malignant), rng, size)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


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
            "diagnosis": _pick(rng, ISIC_MALIGNANT if malignant else ISIC_BENIGN),
            "age_approx": str(age),
            "sex": sex,
            "anatom_site_general": "" if site_missing else _pick(rng, ISIC_SITES),
        }
    return {
        "dx": _pick(rng, HAM_MALIGNANT if malignant else HAM_BENIGN),
        "dx_type": _pick(rng, HAM_DX_TYPE_MALIGNANT if malignant else HAM_DX_TYPE_BENIGN),
        "age": "" if age == "" else f"{float(age):.1f}",
        "sex": sex or "unknown",
        "localization": "" if site_missing else _pick(rng, HAM_SITES),
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
    broken = plan.permutation(n)
    corrupt_idx = sorted(int(i) for i in broken[:corrupt])
    missing_idx = sorted(int(i) for i in broken[corrupt : corrupt + missing])
    kind_offset = int(plan.integers(len(CORRUPT_KINDS)))
    corrupt_kind = {i: CORRUPT_KINDS[(j + kind_offset) % len(CORRUPT_KINDS)] for j, i in enumerate(corrupt_idx)}
    missing_set = set(missing_idx)

    id_col = "isic_id" if schema == "isic" else "image_id"
    columns = ISIC_COLUMNS if schema == "isic" else HAM_COLUMNS
    images_uri = _storage.join(out_uri, "images")
    rows: list[dict[str, str]] = []
    pending: deque[Future] = deque()
    i = 0
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        for j, (k, malignant) in enumerate(zip(sizes, labels)):
            lesion_id = f"{LESION_PREFIX}{j:07d}"
            meta = _lesion_meta(np.random.default_rng([seed, 1, j]), schema, malignant)
            lesion = _sample_lesion(np.random.default_rng([seed, 2, j]), malignant)
            for _ in range(k):
                image_id = f"{ID_PREFIX}{i:07d}"
                rows.append({id_col: image_id, "lesion_id": lesion_id, **meta})
                uri = _storage.join(images_uri, f"{image_id}.jpg")
                if i in missing_set:
                    pending.append(pool.submit(_storage.delete, uri, cfg))  # a stale file from an earlier run
                else:
                    rng = np.random.default_rng([seed, 3, i])
                    data = _jpeg(_render(lesion, rng, image_size))
                    if i in corrupt_kind:
                        data = _corrupt_bytes(corrupt_kind[i], rng, data)
                    pending.append(pool.submit(_storage.write_bytes, uri, data, cfg))
                while len(pending) > 4 * UPLOAD_THREADS:  # bounded memory; re-raises upload errors early
                    pending.popleft().result()
                i += 1
        while pending:
            pending.popleft().result()

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
