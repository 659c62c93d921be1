"""Two models on the same images: the paired ROC-AUC gain, and what each model's stored threshold does per diagnosis.

Reads the ``predictions.parquet`` of two ``skinray evaluate`` runs on the same split (typically the validation split,
where a lever is judged, then the test split, where the winner is reported):

    .venv/bin/python bench/bench_compare.py --ref RUN_C/eval-val --new RUN_I/eval-val [--ref-name C --new-name I]

Prints each model's ROC-AUC with its bootstrap interval, ECE, sensitivity/specificity at its stored threshold with
exact intervals, the sensitivity per malignant diagnosis (exact interval), and the paired-bootstrap gain of the new
model's ROC-AUC over the reference's on the same images (the lever table's comparison). Scores are compared as
logits (``logit_malignant``), so nothing saturates.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skinray.decision import intervals, metrics

from bench.common import log, print_results  # noqa: E402


def load(run: str) -> pd.DataFrame:
    df = pd.read_parquet(os.path.join(run, "predictions.parquet"))
    return df[df["error"].isna()].set_index("isic_id")


def describe(name: str, df: pd.DataFrame) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    y, p, t = df["label"].to_numpy(int), df["prob_malignant"].to_numpy(float), float(df["threshold"].iloc[0])
    report = metrics.full_report(y, p, t, n_boot=1000)
    at = report["at_threshold"]["confusion"]
    ci = report["roc_auc_ci95"]
    row = {"model": name, "n": len(df), "roc_auc": f"{report['ranking']['roc_auc']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]",
           "ece": f"{report['ranking']['ece']:.4f}", "threshold": f"{t:.4f}"}
    for rate, k, n in (("sensitivity", at["tp"], at["tp"] + at["fn"]), ("specificity", at["tn"], at["tn"] + at["fp"])):
        lo, hi = intervals.proportion_ci(k, n)
        row[rate] = f"{k / n:.3f} [{lo:.2f}, {hi:.2f}]"
    per_dx = [{"model": name, "dx": g["group"], "n": g["n"],
               "sensitivity": f"{g['sensitivity']:.3f} [{g['sensitivity_ci95'][0]:.2f}, {g['sensitivity_ci95'][1]:.2f}]"}
              for g in metrics.grouped_report(df.assign(dx=df["dx"].astype("string").str.lower()), "dx", t)
              if g["n_pos"] and g["n_pos"] == g["n"]]  # the malignant diagnoses
    return row, per_dx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="evaluate output folder of the reference model")
    ap.add_argument("--new", required=True, help="evaluate output folder of the model with the lever")
    ap.add_argument("--ref-name", default="ref")
    ap.add_argument("--new-name", default="new")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    ref, new = load(args.ref), load(args.new)
    common = ref.index.intersection(new.index)
    if len(common) != len(ref) or len(common) != len(new):
        raise SystemExit(f"the two runs scored different images ({len(ref)} and {len(new)}, {len(common)} shared): "
                         "compare evaluations of the same split of the same prepared data")
    ref, new = ref.loc[common], new.loc[common]
    if not (ref["label"] == new["label"]).all():
        raise SystemExit("the two runs disagree on labels: not the same prepared data")
    log(f"comparing {args.new_name} with {args.ref_name} on {len(common):,} images")
    rows, per_dx = [], []
    for name, df in ((args.ref_name, ref), (args.new_name, new)):
        row, dx = describe(name, df)
        rows.append(row)
        per_dx += dx
    gain, lo, hi = intervals.paired_auc_gain(ref["label"].to_numpy(int), new["logit_malignant"].to_numpy(float),
                                             ref["logit_malignant"].to_numpy(float), n_boot=args.n_boot)
    paired = [{"comparison": f"{args.new_name} - {args.ref_name}", "roc_auc_gain": f"{gain:+.4f}",
               "paired_bootstrap_95": f"[{lo:+.4f}, {hi:+.4f}]", "excludes_zero": "yes" if lo > 0 or hi < 0 else "no"}]
    print_results(f"{args.new_name} against {args.ref_name}",
                  {"models at their stored thresholds (exact 95% intervals)": rows,
                   "sensitivity per malignant diagnosis": per_dx, "paired ROC-AUC gain": paired},
                  {"models": rows, "per_diagnosis": per_dx, "gain": gain, "gain_ci95": [lo, hi]})


if __name__ == "__main__":
    main()
