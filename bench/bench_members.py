"""What averaging buys: an ensemble model (``skinray train --folds K --ensemble``) against each of its members, on
the same images, one view each, with the paired-bootstrap ROC-AUC gain of the ensemble over every member.

The members are read out of the ensemble's own ``model.keras`` (``skinray.model.network.members_of``), so nothing but the
model directory and a prepared split is needed. Keras on CPU: about 2 minutes for 2,000 images and 5 members here.

Run from the repository root:
  .venv/bin/python bench/bench_members.py --model ENSEMBLE --prepared P [--split test]
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import log, print_results  # noqa: E402

BATCH = 64


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a model directory written with --ensemble")
    ap.add_argument("--prepared", required=True, help="a prepared dataset (skinray prepare --out)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    args = ap.parse_args(argv)

    from sklearn.metrics import roc_auc_score as roc_auc

    from skinray.config import ImageConfig
    from skinray.data.prepare import load_prepared
    from skinray.data.prepared import decode_rows
    from skinray.decision.intervals import paired_auc_gain
    from skinray.io.storage import StorageConfig
    from skinray.model.artifact import ModelArtifact
    from skinray.model.network import forward, members_of

    artifact = ModelArtifact.open(args.model)
    members = members_of(artifact.load_keras())
    if len(members) < 2:
        raise SystemExit(f"{args.model} is not an ensemble (train it with --folds K --ensemble)")
    rows = load_prepared(args.prepared)
    rows = rows[rows["split"] == args.split].reset_index(drop=True)
    y = rows["label"].to_numpy(int)
    image_cfg = artifact.image_config(ImageConfig())
    z = np.zeros((len(members), len(rows)))
    log(f"{len(members)} members on {len(rows):,} {args.split} images, one view each")
    with ThreadPoolExecutor(2) as pool:
        for i in range(0, len(rows), BATCH):
            x = decode_rows(rows.iloc[i:i + BATCH], StorageConfig(), image_cfg, pool)
            for k, member in enumerate(members):
                z[k, i:i + BATCH] = forward(member, x)["logit"]
    ensemble = z.mean(axis=0)
    table = []
    for k, member in enumerate(members):
        gain, lo, hi = paired_auc_gain(y, ensemble, z[k])
        table.append({"model": member.name, "roc_auc": f"{roc_auc(y, z[k]):.4f}",
                      "ensemble gain (paired)": f"{gain:+.4f} [{lo:+.4f}, {hi:+.4f}]"})
    table.append({"model": "mean of the members", "roc_auc": f"{np.mean([roc_auc(y, zk) for zk in z]):.4f}"})
    table.append({"model": "ensemble (mean logit)", "roc_auc": f"{roc_auc(y, ensemble):.4f}"})
    corr = np.corrcoef(z)
    off = corr[~np.eye(len(members), dtype=bool)]
    print_results("bench_members", {
        f"{args.model} on the {args.split} split ({len(rows):,} images, one view)": table,
        "members' logits": [{"pairwise correlation min": round(float(off.min()), 3),
                             "max": round(float(off.max()), 3)}]},
        {"model": args.model, "split": args.split, "members": table, "correlation": corr.round(4).tolist()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
