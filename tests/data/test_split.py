import numpy as np
import pandas as pd

from skinray.data.split import assign_splits, split_summary


def _data(n_groups=3000, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 1, 1, 2, 3, 5], size=n_groups)
    labels = (rng.random(n_groups) < 0.2).astype(int)
    groups = np.repeat([f"L{i}" for i in range(n_groups)], sizes)
    return pd.Series(np.repeat(labels, sizes)), pd.Series(groups)


def test_grouped_stratified_shares():
    labels, groups = _data()
    split = assign_splits(labels, groups, 0.08, 0.20, seed=1)
    df = pd.DataFrame({"label": labels, "lesion_id": groups, "split": split})
    assert (df.groupby("lesion_id")["split"].nunique() == 1).all()
    summary = split_summary(df)
    whole = labels.mean()
    for name, target in (("train", 0.72), ("val", 0.08), ("test", 0.20)):
        assert abs(summary[name]["share"] - target) <= 0.01
        assert abs(summary[name]["malignant_fraction"] - whole) <= 0.01


def test_deterministic_for_a_seed_and_differs_across_seeds():
    labels, groups = _data(500)
    a = assign_splits(labels, groups, seed=5)
    assert a.equals(assign_splits(labels, groups, seed=5))
    assert not a.equals(assign_splits(labels, groups, seed=6))


def test_every_row_gets_a_split_and_index_is_kept():
    labels, groups = _data(50)
    labels.index = labels.index + 100
    groups.index = labels.index
    split = assign_splits(labels, groups)
    assert split.index.equals(labels.index)
    assert set(split) <= {"train", "val", "test"} and split.notna().all()


def test_adding_a_source_moves_no_image_of_another():
    rng = np.random.default_rng(4)
    n = 1200
    a = pd.DataFrame({"label": (rng.random(n) < 0.25).astype(int), "lesion": [f"a{i // 2}" for i in range(n)],
                      "source": "a"})
    b = pd.DataFrame({"label": (rng.random(300) < 0.5).astype(int), "lesion": [f"b{i}" for i in range(300)],
                      "source": "b"})
    alone = assign_splits(a["label"], a["lesion"], strata=a["source"])
    both = pd.concat([a, b], ignore_index=True)
    pooled = assign_splits(both["label"], both["lesion"], strata=both["source"])
    assert (pooled.iloc[:n].to_numpy() == alone.to_numpy()).all()
    shares = pd.crosstab(both["source"], pooled, normalize="index")
    assert ((shares["test"] - 0.2).abs() < 0.03).all() and ((shares["val"] - 0.08).abs() < 0.03).all()
