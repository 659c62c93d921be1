"""Grad-CAM sanity: on a model trained on synthetic lesions, the saliency of flagged images sits on the lesion."""

import numpy as np
import pytest

from skinray import synth_render
from skinray.saliency import GradCam, mass_inside, overlay

pytestmark = pytest.mark.slow
SIZE = 96  # rendered 128 x 96 (4:3); the centre square is the model's input, as images.decode crops it


def _lesions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, masks = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        malignant = i % 2 == 0
        img, mask = synth_render.render_with_mask(synth_render.sample_lesion(rng, malignant), rng, 128)
        left = (128 - SIZE) // 2
        xs.append(np.asarray(img)[:, left:left + SIZE])
        masks.append(mask[:, left:left + SIZE])
        ys.append(int(malignant))
    return np.stack(xs).astype(np.float32), np.asarray(ys, np.float32), np.stack(masks)


def test_saliency_mass_is_on_the_lesion_for_most_flagged_images():
    import keras

    from skinray.model import build_model

    keras.utils.set_random_seed(0)
    x, y, _ = _lesions(640, 1)
    model = build_model(SIZE, alpha=0.35, weights=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=14, verbose=0, shuffle=True)
    xt, yt, masks = _lesions(160, 2)
    logits = np.asarray(model(xt, training=False)).reshape(-1)
    flagged = np.argsort(-logits)[:24]  # the most suspicious, as a review page shows them
    assert yt[flagged].mean() > 0.6, "the model learned the synthetic classes"
    maps = GradCam(model)(xt[flagged])
    assert maps.shape == (24, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    inside = [mass_inside(m, masks[i]) for m, i in zip(maps, flagged)]
    on_lesion = sum(a > b for a, b in inside)
    assert on_lesion > len(flagged) / 2, inside
    assert overlay(xt[flagged[0]].astype(np.uint8), maps[0]).shape == (SIZE, SIZE, 3)
