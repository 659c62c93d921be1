"""Whether a trained network learned: the decision that stops a dead model from being written (issue 25)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from skinray.train.learned import judge


def _scores(n: int, auc: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half malignant; logits whose ROC-AUC is about ``auc`` (normal scores shifted by the binormal d')."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    return y, rng.normal(0, 1, n) + y * np.sqrt(2) * norm.ppf(auc)


def test_constant_outputs_are_a_dead_network():
    y = np.repeat([0, 1], 60)
    verdict = judge(y, np.full(120, 2.71828, np.float32))
    assert verdict.dead and "constant" in verdict.problem and "120" in verdict.problem
    # float32 noise around one value is one value; flip views are averaged first
    noisy = 2.5 + np.random.default_rng(0).normal(0, 1e-7, (120, 3))
    assert judge(y, noisy).dead and "constant" in judge(y, noisy).problem
    # constant outputs are dead even with the confidence check off and with one class only
    assert judge(y, np.zeros(120), confidence=None).dead
    assert judge(np.zeros(120, int), np.zeros(120)).dead


def test_non_finite_outputs_are_a_diverged_network():
    y, z = _scores(40, 0.9)
    z[3] = np.nan
    verdict = judge(y, z, confidence=None)
    assert verdict.dead and "not finite" in verdict.problem


def test_auc_052_on_40_images_is_not_above_chance():
    y, z = _scores(40, 0.52, seed=117)
    assert roc_auc_score(y, z) == pytest.approx(0.52)
    verdict = judge(y, z)
    assert verdict.dead and "not above chance" in verdict.problem
    assert verdict.ci[0] <= 0.5 < verdict.ci[1] and "40 images (20 malignant)" in verdict.problem
    assert not judge(y, z, confidence=None).dead  # the check switched off: only constant outputs stop it


def test_auc_09_on_200_images_is_fine_and_the_verdict_is_deterministic():
    y, z = _scores(200, 0.9, seed=2)
    verdict = judge(y, z)
    assert not verdict.dead and verdict.problem is None
    assert verdict.auc == pytest.approx(roc_auc_score(y, z)) and verdict.auc > 0.85
    assert 0.5 < verdict.ci[0] < verdict.auc < verdict.ci[1]
    assert judge(y, z) == verdict
    # AUC ranks: saturated logits (a float sigmoid would tie them all at 1.0) keep their order
    assert judge(y, z + 60.0).auc == pytest.approx(verdict.auc)


def test_a_small_working_validation_set_is_not_called_dead():
    # 60 images (12 malignant) from a model as good as the demo's (AUC ~0.85): above chance with confidence
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(48, int), np.ones(12, int)]
    z = rng.normal(0, 1, 60) + y * np.sqrt(2) * norm.ppf(0.85)
    assert roc_auc_score(y, z) > 0.8
    assert not judge(y, z).dead


def test_one_class_cannot_be_ranked_so_only_constant_outputs_count():
    verdict = judge(np.zeros(30, int), np.linspace(-1, 1, 30))
    assert not verdict.dead and verdict.auc is None and verdict.ci is None


def test_a_training_that_writes_no_model_leaves_out_as_it_was(tmp_path):
    """What a training created is removed again (its own run folders, then the checkpoint root and --out where
    nothing else landed); an existing model at --out, its other runs and files that appeared meanwhile stay."""
    from skinray.config import load_config
    from skinray.train.created import absent, discard

    def cfg(out):
        return load_config(overrides={"train.out": str(out), "train.folds": 2})

    fresh = tmp_path / "fresh"
    created = absent(cfg(fresh), str(fresh / "_ray"), "train-x")
    assert created[-2:] == [str(fresh / "_ray"), str(fresh)] and len(created) == 6  # run, 2 folds, final, root, out
    (fresh / "_ray" / "train-x-fold1of2" / "checkpoint_0").mkdir(parents=True)
    (fresh / "_ray" / "train-x-fold1of2" / "checkpoint_0" / "best.weights.h5").write_bytes(b"w")
    (fresh / "_ray" / "train-x" / "fold1of2.npz").parent.mkdir(parents=True)
    (fresh / "_ray" / "train-x" / "fold1of2.npz").write_bytes(b"z")
    discard(created, str(fresh / "_ray"), cfg(fresh))
    assert not fresh.exists()

    model = tmp_path / "model"  # a model written earlier, with its own run's checkpoints
    (model / "_ray" / "train-old").mkdir(parents=True)
    (model / "_ray" / "train-old" / "state.json").write_text("{}")
    (model / "skinray.json").write_text("{}")
    created = absent(cfg(model), str(model / "_ray"), "train-x")
    assert str(model) not in created and str(model / "_ray") not in created
    (model / "_ray" / "train-x").mkdir()
    (model / "_ray" / "train-x" / "state.json").write_text("{}")
    discard(created, str(model / "_ray"), cfg(model))
    assert sorted(p.name for p in model.rglob("*")) == ["_ray", "skinray.json", "state.json", "train-old"]

    shared = tmp_path / "shared"  # a checkpoint root another training wrote to meanwhile is kept, its run too
    created = absent(cfg(tmp_path / "m2"), str(shared), "train-x")
    (shared / "train-other").mkdir(parents=True)
    (shared / "train-other" / "state.json").write_text("{}")
    (shared / "train-x").mkdir()
    discard(created, str(shared), cfg(tmp_path / "m2"))
    assert [p.name for p in shared.iterdir()] == ["train-other"]
