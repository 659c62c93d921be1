"""Training-time augmentation: deterministic per seed, shape- and range-preserving, photometric only when asked."""

import numpy as np

from skinray.data.prepared import _photometric, augment


def _img(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((48, 48, 3), np.float32)
    base[12:36, 12:36] = (150, 80, 60)  # a lesion on skin
    base += (220, 170, 150) * (base.sum(axis=2, keepdims=True) == 0)
    return np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8)


def test_augment_is_deterministic_per_seed_and_keeps_shape_and_type():
    img = _img()
    for photometric in (False, True):
        a = augment(img, np.random.default_rng(7), True, photometric)
        b = augment(img, np.random.default_rng(7), True, photometric)
        assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)
        assert not np.array_equal(a, augment(img, np.random.default_rng(8), True, photometric))


def test_photometric_augment_varies_colour_and_brightness_the_geometric_one_does_not():
    img = _img()
    centre = (slice(18, 30), slice(18, 30))  # inside the lesion whatever the rotation, zoom and shift

    def spread(photometric: bool) -> float:
        means = [augment(img, np.random.default_rng(s), False, photometric)[centre].reshape(-1, 3).mean(axis=0)
                 for s in range(40)]
        return float(np.std(np.asarray(means), axis=0).max())

    assert spread(False) < 6 < spread(True)  # geometric only: the lesion's colour stays; photometric: it moves


def _flat_pixels(out: np.ndarray) -> int:
    """Pixels equal to their right and lower neighbours, neither black (borders) nor clipped white."""
    x = out.astype(int)
    same = (x[:-1, :-1] == x[1:, :-1]).all(axis=2) & (x[:-1, :-1] == x[:-1, 1:]).all(axis=2)
    inner = ((x[:-1, :-1] > 0) & (x[:-1, :-1] < 255)).all(axis=2)
    return int((same & inner).sum())


def test_photometric_augment_sometimes_cuts_a_square_out():
    """On a borderless noise image (a rotation's black corners would turn flat under brightness and contrast)."""
    noise = np.random.default_rng(1).integers(30, 220, (48, 48, 3)).astype(np.uint8)
    side = 48 // 4
    assert _flat_pixels(noise) < 10
    cuts = [_flat_pixels(_photometric(noise, np.random.default_rng(s))) >= (side - 1) ** 2 for s in range(40)]
    assert 8 <= sum(cuts) <= 32  # p 0.5
