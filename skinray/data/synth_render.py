"""Synthetic dermoscopy-like pictures: skin with texture, a round dermoscope field of view, hairs and one lesion.

A latent "malignancy" score ~ N(+0.8, 1) for malignant and N(-0.8, 1) for benign lesions drives size, asymmetry,
border irregularity, colour count and darkness, so the classes overlap: learnable, not trivial. The data set around
the pictures (ids, metadata, broken files) is :mod:`skinray.data.synth`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ASPECT = 0.75  # height / width, as in real dermoscopy images
JPEG_QUALITY = 90

LATENT_MEAN = 0.8  # latent malignancy score ~ N(+-LATENT_MEAN, 1)

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

# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lesion:
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


def pick(rng: np.random.Generator, table: tuple[tuple[str, float], ...]) -> str:
    """One name from a (name, weight) table."""
    weights = np.array([w for _, w in table], dtype=float)
    return table[int(rng.choice(len(table), p=weights / weights.sum()))][0]


def sample_lesion(rng: np.random.Generator, malignant: bool) -> Lesion:
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
    return Lesion(
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


def _draw_hairs(rng: np.random.Generator, lesion: Lesion, w: int, h: int) -> np.ndarray:
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


def render(lesion: Lesion, rng: np.random.Generator, size: int) -> Image.Image:
    """One photograph of ``lesion``: pose, zoom, light, field of view, hairs and noise come from ``rng``."""
    return render_with_mask(lesion, rng, size)[0]


def render_with_mask(lesion: Lesion, rng: np.random.Generator, size: int) -> tuple[Image.Image, np.ndarray]:
    """:func:`render`, and where the lesion is (a boolean mask): what saliency tests compare maps with."""
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
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8)), alpha > 0.5  # HxWx3 uint8 -> RGB


def render_lesion(rng: np.random.Generator, malignant: bool, size: int) -> Image.Image:
    """One synthetic dermoscopy image, ``size`` wide and ``round(0.75 * size)`` high (4:3), for tests and demos.

    Malignant lesions are on average larger, more asymmetric, more ragged and more multi-coloured; the traits come
    from overlapping distributions, so a single image's class is not certain.
    """
    return render(sample_lesion(rng, malignant), rng, size)


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
