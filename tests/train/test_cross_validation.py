"""Folds, the epoch choice and the per-fold result files, without Ray."""

import json

import numpy as np
import pandas as pd
import pytest

from skinray import SkinrayError
from skinray.io.storage import StorageConfig
from skinray.train.cross_validation import (
    FoldResult,
    assign_folds,
    choose_epochs,
    fold_uri,
    load_fold,
    out_of_fold,
    save_fold,
    summary,
)


def _rows(n_lesions: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dx = rng.choice(["nv", "bkl", "df", "mel", "bcc", "akiec"], n_lesions, p=[.55, .15, .05, .12, .08, .05])
    images = rng.integers(1, 5, n_lesions)  # several images of one lesion, as in HAM10000
    lesion = np.repeat([f"L{i}" for i in range(n_lesions)], images)
    dxs = np.repeat(dx, images)
    return pd.DataFrame({"isic_id": [f"I{i}" for i in range(len(lesion))], "lesion_id": lesion, "dx": dxs,
                         "label": np.isin(dxs, ["mel", "bcc", "akiec"]).astype(int)})


def test_folds_keep_lesions_whole_and_spread_each_diagnosis():
    rows = _rows()
    folds = assign_folds(rows, 5, seed=42)
    assert set(folds) == set(range(5))
    assert (rows.assign(f=folds).groupby("lesion_id")["f"].nunique() == 1).all()  # no lesion in two folds
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 0.25 * sizes.mean()
    for dx, part in rows.assign(f=folds).groupby("dx"):  # every diagnosis in (nearly) every fold
        if len(part) >= 25:
            assert part["f"].nunique() == 5, dx
    assert (assign_folds(rows, 5, seed=42) == folds).all()  # reproducible
    assert not (assign_folds(rows, 5, seed=7) == folds).all()


def test_folds_that_cannot_train_or_score_both_classes_are_one_clear_error():
    rows = _rows(40)
    with pytest.raises(SkinrayError, match="needs at least 50 lesions"):
        assign_folds(rows, 50, seed=0)
    one_positive = rows.assign(label=0)
    one_positive.loc[0, "label"] = 1
    with pytest.raises(SkinrayError, match="one class only.*use fewer folds"):
        assign_folds(one_positive, 3, seed=0)


def _result(fold: int, history: list[tuple[int, float | None]], best: int, n: int = 2) -> FoldResult:
    return FoldResult(fold, 3, [f"f{fold}-{i}" for i in range(n)], np.zeros((n, 3)), best,
                      [{"epoch": e, "phase": 1, "val_auc": a} for e, a in history])


def test_the_epoch_count_is_where_the_mean_held_out_auc_peaks_over_epochs_every_fold_ran():
    results = [_result(0, [(1, .70), (2, .80), (3, .85), (5, .84)], 3),
               _result(1, [(1, .72), (2, .83), (3, .80), (5, .90), (6, .91)], 6),  # ran on: epoch 6 not common
               _result(2, [(1, .71), (2, .82), (3, .81), (5, .86)], 5)]
    epochs, curve = choose_epochs(results)
    assert sorted(curve) == [1, 2, 3, 5]  # the head phase's budget ended at 3 in all, fine-tuning began at 5
    assert epochs == 5 and curve[5] == pytest.approx((.84 + .90 + .86) / 3)
    tie = [_result(0, [(1, .8), (2, .8)], 1), _result(1, [(1, .8), (2, .8)], 1)]
    assert choose_epochs(tie)[0] == 1  # equal peaks: the shorter training
    no_auc = [_result(0, [(1, None), (2, None)], 2), _result(1, [(1, None), (2, None), (3, None)], 3)]
    assert choose_epochs(no_auc) == (2, {})  # the median best epoch


def test_fold_results_are_read_back_only_when_they_match_the_fold(tmp_path):
    cfg = StorageConfig()
    run = str(tmp_path / "run")
    ids = ["a", "b", "c"]
    result = FoldResult(1, 4, ids, np.array([[0.5, 0.4, 0.6], [-2.0, -2.1, -1.9], [3.0, 3.1, 2.9]]), 7,
                        [{"epoch": 7, "phase": 2, "val_auc": 0.9}])
    assert load_fold(run, 1, 4, ids, 3, cfg) is None  # not run yet
    save_fold(run, result, cfg)
    back = load_fold(run, 1, 4, ids, 3, cfg)
    assert back is not None and back.best_epoch == 7 and back.best_auc == 0.9
    np.testing.assert_array_equal(back.views, result.views)
    # another fold's rows (a changed manifest), another view count (train.tta changed), another fold count
    assert load_fold(run, 1, 4, ["a", "b", "d"], 3, cfg) is None
    assert load_fold(run, 1, 4, ids, 1, cfg) is None
    assert load_fold(run, 1, 5, ids, 3, cfg) is None
    path = fold_uri(run, 1, 4)
    saved = json.loads(open(path).read())
    saved["views"][0][0] = None  # a NaN written out
    open(path, "w").write(json.dumps(saved))
    assert load_fold(run, 1, 4, ids, 3, cfg) is None
    open(path, "w").write("{not json")
    assert load_fold(run, 1, 4, ids, 3, cfg) is None


def test_out_of_fold_scores_every_row_once_in_the_rows_order():
    assignment = np.array([1, 0, 1, 0, 2])
    results = [FoldResult(f, 3, [], np.array([[10.0 * f + i] for i in range((assignment == f).sum())]), 1,
                          [{"epoch": 1, "val_auc": 0.5}]) for f in range(3)]
    np.testing.assert_array_equal(out_of_fold(assignment, results)[:, 0], [10, 0, 11, 1, 20])
    with pytest.raises(SkinrayError, match="without an out-of-fold score"):
        out_of_fold(assignment, results[:2])
    s = summary(assignment, np.array([1, 0, 0, 1, 1]), results, 1, {1: 0.5})
    assert [f["rows"] for f in s["per_fold"]] == [2, 2, 1] and [f["malignant"] for f in s["per_fold"]] == [1, 1, 1]
    assert s["epochs"] == 1 and s["folds"] == 3
