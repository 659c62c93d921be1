"""Lever 3 of issue 12 screened cheaply: does age, sex and site add to a fine-tuned model's logit?

Late fusion on the model's own predictions, no retraining: a logistic regression on (logit, age, sex, site) is
fitted on the **validation split only** and judged twice, both paired against the logit alone:

- on validation, out of fold: lesion-grouped, stratified 5-fold CV inside the validation split (how the lever is
  judged);
- on test, fitted on all of validation (reported beside it, never used to choose).

    .venv/bin/python bench/bench_fusion.py --val RUN/eval-val --test RUN/eval-test [--name C5] [--c 0.1 1]

Inputs are the ``predictions.parquet`` of ``skinray evaluate`` (which carry the metadata columns). A missing age,
sex or site falls back to "unknown" (its own indicator), as a scoring manifest without metadata would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skinray.decision import inputs, intervals

from bench.bench_compare import load as load_scored  # noqa: E402
from bench.common import log, print_results  # noqa: E402

FOLDS = 5


def features(df: pd.DataFrame, sites: list[str]) -> np.ndarray:
    """logit, standardised age with a missing flag, sex and site one-hot (unknown = all zeros)."""
    age = pd.to_numeric(df["age_approx"], errors="coerce").astype(float)
    sex = df["sex"].astype("string").str.lower()
    site = df["anatom_site_general"].astype("string").str.lower()
    cols = [df["logit_malignant"].to_numpy(float), ((age.fillna(50.0) - 50.0) / 20.0).to_numpy(),
            age.isna().to_numpy(float), (sex == "male").fillna(False).to_numpy(float),
            (sex == "female").fillna(False).to_numpy(float)]
    cols += [(site == s).fillna(False).to_numpy(float) for s in sites]
    return np.column_stack(cols)


def screen(val: pd.DataFrame, test: pd.DataFrame, c: float, n_boot: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold

    sites = sorted(s for s in val["anatom_site_general"].astype("string").str.lower().dropna().unique()
                   if s != "unknown")
    yv, yt = val["label"].to_numpy(int), test["label"].to_numpy(int)
    xv, xt = features(val, sites), features(test, sites)
    oof = np.zeros(len(val))
    for train, held in StratifiedGroupKFold(FOLDS, shuffle=True, random_state=0).split(xv, yv, val["lesion_id"]):
        oof[held] = LogisticRegression(C=c, max_iter=1000).fit(xv[train], yv[train]).decision_function(xv[held])
    fused = LogisticRegression(C=c, max_iter=1000).fit(xv, yv)
    out = {}
    for split, y, new, ref in (("validation (out of fold)", yv, oof, xv[:, 0]),
                               ("test (fitted on validation)", yt, fused.decision_function(xt), xt[:, 0])):
        gain, lo, hi = intervals.paired_auc_gain(y, new, ref, n_boot=n_boot)
        out[split] = {"roc_auc_logit": f"{inputs.sklearn_metrics().roc_auc_score(y, ref):.4f}",
                      "roc_auc_fused": f"{inputs.sklearn_metrics().roc_auc_score(y, new):.4f}",
                      "gain": f"{gain:+.4f}", "paired_bootstrap_95": f"[{lo:+.4f}, {hi:+.4f}]"}
    out["coefficients"] = dict(zip(["logit", "age", "age_missing", "male", "female", *sites],
                                   np.round(fused.coef_[0], 3).tolist()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--val", required=True, help="evaluate output folder of the validation split")
    ap.add_argument("--test", required=True, help="evaluate output folder of the test split")
    ap.add_argument("--name", default="model")
    ap.add_argument("--c", type=float, nargs="+", default=[0.1, 1.0], help="inverse L2 strengths to try")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    val, test = (load_scored(run).reset_index() for run in (args.val, args.test))
    if set(val["isic_id"]) & set(test["isic_id"]):
        raise SystemExit("the validation and test predictions share images: give two splits of one prepared dataset")
    log(f"{args.name}: fusion fitted on {len(val):,} validation images, tested on {len(test):,}")
    rows, payload = [], {}
    for c in args.c:
        result = screen(val, test, c, args.n_boot)
        payload[f"C={c:g}"] = result
        rows += [{"model": args.name, "C": f"{c:g}", "split": split, **result[split]}
                 for split in ("validation (out of fold)", "test (fitted on validation)")]
    print_results(f"late metadata fusion on {args.name}", {"fused against the logit alone (paired)": rows}, payload)


if __name__ == "__main__":
    main()
