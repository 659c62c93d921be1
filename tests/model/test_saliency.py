"""Grad-CAM sanity: on a model trained on synthetic lesions, the saliency of flagged images sits on the lesion."""

import numpy as np
import pytest

from skinray.data import synth_render
from skinray.model.saliency import GradCam, mass_inside, overlay

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

    from skinray.model.network import build_model

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


@pytest.mark.parametrize("malignant_dx", [None, [True, False, True]])
def test_an_ensemble_of_identical_members_has_its_members_map(malignant_dx):
    """The ensemble's Grad-CAM is that of its mean logit: with two copies of one network it is that network's
    map; with the diagnosis target the gradient runs through the diagnosis logits to the readout."""
    import keras

    from skinray.model.network import build_ensemble, build_model

    x, _, _ = _lesions(4, 3)
    dx = 3 if malignant_dx else 0
    keras.utils.set_random_seed(0)
    one = build_model(SIZE, alpha=0.35, weights=None, dx_classes=dx, malignant_dx=malignant_dx)
    copies = []
    for i in range(2):
        copy = build_model(SIZE, alpha=0.35, weights=None, dx_classes=dx, malignant_dx=malignant_dx,
                           name=f"member_{i + 1}")
        copy.set_weights(one.get_weights())
        copies.append(copy)
    single = GradCam(one)(x)
    assert single.shape == (4, SIZE, SIZE) and np.isfinite(single).all() and single.max() > 0
    np.testing.assert_allclose(GradCam(build_ensemble(copies))(x), single, atol=1e-4)
