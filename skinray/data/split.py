"""Stratified, lesion-grouped train/val/test split.

Several images often show one lesion (HAM10000: 10,015 images of 7,470 lesions); a lesion in two splits leaks
its label into the test score, so whole lesions are assigned, and each label stratum is filled to its target.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def assign_splits(
    labels: pd.Series,
    groups: pd.Series,
    val_fraction: float = 0.08,
    test_fraction: float = 0.20,
    seed: int = 42,
    strata: pd.Series | None = None,
) -> pd.Series:
    """Split names for each row: groups never straddle splits; per label (and per ``strata`` value, e.g. the
    source of each row), shares track the targets.

    Greedy by group: within each stratum (a group's majority label, and the ``strata`` value of its first row) groups
    are shuffled by ``seed`` and each goes to the split that is furthest below its target image count. The error is at
    most one group per stratum. With ``strata`` each stratum draws from its own generator (seeded by ``seed``, the
    label and the stratum's name), so adding a source never moves another source's images between splits.
    """
    if len(labels) != len(groups) or (strata is not None and len(strata) != len(labels)):
        raise ValueError("labels, groups and strata differ in length")
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    frame = pd.DataFrame({"label": np.asarray(labels, dtype=int), "group": np.asarray(groups, dtype=object),
                          "extra": "" if strata is None else np.asarray(strata, dtype=object)})
    frame["extra"] = frame["extra"].astype("string").fillna("")
    per_group = frame.groupby("group", sort=True).agg(size=("label", "size"), label=("label", "mean"),
                                                      extra=("extra", "first"))
    per_group["stratum"] = list(zip((per_group["label"] >= 0.5).astype(int), per_group["extra"]))
    rng = np.random.default_rng(seed)
    chosen: dict[object, str] = {}
    for (label, extra), stratum in per_group.groupby("stratum", sort=True):
        if strata is not None:
            rng = np.random.default_rng([seed, int(label), zlib.crc32(str(extra).encode())])
        order = rng.permutation(len(stratum))
        names = stratum.index.to_numpy()[order]
        sizes = stratum["size"].to_numpy()[order]
        # Large groups first keeps the greedy error small; the stable sort keeps the seeded order among equals.
        by_size = np.argsort(-sizes, kind="stable")
        targets = fractions * sizes.sum()
        filled = np.zeros(3)
        for i in by_size:
            deficit = (targets - filled) / np.maximum(targets, 1e-9)
            k = int(np.argmax(deficit))
            chosen[names[i]] = SPLITS[k]
            filled[k] += sizes[i]
    return frame["group"].map(chosen).set_axis(labels.index).astype("object")


def split_summary(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per split: rows, share of all rows, malignant fraction — the numbers a reviewer checks first."""
    total = max(len(df), 1)
    out = {}
    for name in SPLITS:
        part = df[df["split"] == name]
        out[name] = {
            "rows": int(len(part)),
            "share": round(len(part) / total, 4),
            "malignant_fraction": round(float(part["label"].mean()), 4) if len(part) else None,
            "lesions": int(part["lesion_id"].nunique()) if "lesion_id" in part else None,
        }
    return out
