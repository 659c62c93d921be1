"""Training throughput (images/s per epoch) against a plain forward pass over the same images, in one run.

Takes ``--n`` training and ``--val`` validation rows of a prepared HAM10000 dataset, runs ``skinray.train.driver.train``
on them (Ray Train, ``--workers`` workers, frozen ImageNet base unless ``--fine-tune`` layers are unfrozen) and reads
each epoch's images/s from the model's ``skinray.json``. Baseline, same images, same process tree, right after: the
same Keras model's forward pass alone (``model(x, training=False)`` in a ``tf.function``, batch 32, all cores) on images decoded
beforehand — the floor of what one training step costs with a frozen base. The ratio says how much of training is
the unavoidable forward pass and how much is decode, augmentation, backward pass and Ray.

    .venv/bin/python bench/bench_train.py --prepared /work/runs/ham-prepared            # ~5 minutes
    .venv/bin/python bench/bench_train.py --prepared /work/runs/ham-prepared --fine-tune 56
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_WEIGHTS, DEFAULT_WORKDIR, in_subprocess, log, print_results, ratio  # noqa: E402


def subset(prepared: str, out: str, n: int, val: int) -> None:
    """A prepared dataset of the first ``n`` train and ``val`` validation rows (same files, same columns)."""
    import pandas as pd

    df = pd.read_parquet(os.path.join(prepared, "manifest.parquet"))
    part = pd.concat([df[df.split == "train"].head(n), df[df.split == "val"].head(val)], ignore_index=True)
    os.makedirs(out, exist_ok=True)
    part.to_parquet(os.path.join(out, "manifest.parquet"), index=False)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"rows_in": len(part), "note": f"bench subset of {prepared}"}, f)


def forward_pass(prepared: str, weights: str, size: int, resize: str, repeats: int) -> dict[str, Any]:
    """Images/s of the model's forward pass alone on pre-decoded training images (in a fresh process)."""
    import numpy as np
    import pandas as pd

    from skinray.config import ImageConfig
    from skinray.data import images
    from skinray.model.network import build_model

    df = pd.read_parquet(os.path.join(prepared, "manifest.parquet"))
    uris = df[df.split == "train"]["image_uri"].tolist()
    cfg = ImageConfig(size=size, resize=resize)
    x = np.stack([images.decode(open(u, "rb").read(), cfg) for u in uris]).astype(np.float32)
    import tensorflow as tf

    model = build_model(size, 1.0, weights)
    forward = tf.function(lambda b: model(b, training=False), reduce_retracing=True)  # compiled, as in training
    forward(tf.constant(x[:32]))  # build + trace + warm up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(x) - len(x) % 32, 32):
            np.asarray(forward(tf.constant(x[i : i + 32])))
        rates.append((len(x) - len(x) % 32) / (time.perf_counter() - t0))
    return {"images": len(x), "rates": [round(r, 1) for r in rates]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True, help="a prepared HAM10000 dataset")
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS)
    ap.add_argument("--n", type=int, default=1024, help="training images")
    ap.add_argument("--val", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16, help="per worker")
    ap.add_argument("--resize", default="center_crop")
    ap.add_argument("--fine-tune", type=int, default=0, help="train with the top N base layers unfrozen")
    ap.add_argument("--workdir", default=os.path.join(DEFAULT_WORKDIR, "train"))
    args = ap.parse_args()

    from skinray.config import load_config
    from skinray.train.driver import train

    data, model_dir = os.path.join(args.workdir, "prepared"), os.path.join(args.workdir, "model")
    shutil.rmtree(args.workdir, ignore_errors=True)
    subset(args.prepared, data, args.n, args.val)
    over = {"train.prepared": data, "train.out": model_dir, "train.weights": args.weights,
            "train.workers": args.workers, "train.batch_size": args.batch_size, "train.epochs": args.epochs,
            "image.resize": args.resize, "train.storage_path": os.path.join(args.workdir, "ray"),
            "train.fine_tune_epochs": 0, "train.early_stopping_patience": 0, "train.tta": False}
    if args.fine_tune:  # every epoch in the fine-tuning phase: one head epoch, then the rest unfrozen
        over.update({"train.epochs": 1, "train.fine_tune_layers": args.fine_tune,
                     "train.fine_tune_epochs": args.epochs - 1})
    log(f"training {args.n} images x {args.epochs} epochs on {args.workers} workers")
    t0 = time.time()
    meta = train(load_config(overrides=over), log)
    wall = time.time() - t0
    log("forward pass baseline")
    fwd = in_subprocess(forward_pass, data, args.weights, 224, args.resize, 2)
    fwd_rate = sum(fwd["rates"]) / len(fwd["rates"])
    rows = [{"stage": f"train epoch {h['epoch']} (phase {h['phase']})", "images": h["train_images"],
             "seconds": h["seconds"], "img/s": h["images_per_second"],
             "ratio vs forward pass": ratio(h["images_per_second"], fwd_rate)} for h in meta["history"]]
    rows.append({"stage": "forward pass alone, Keras tf.function, batch 32 (2 runs)", "images": fwd["images"],
                 "seconds": None, "img/s": " / ".join(str(r) for r in fwd["rates"]), "ratio vs forward pass": 1.0})
    steady = [h["images_per_second"] for h in meta["history"][1:]] or [meta["history"][0]["images_per_second"]]
    print_results("bench_train", {f"Training throughput, {args.workers} workers x batch {args.batch_size}, "
                                  f"fine-tuned top layers {args.fine_tune}": rows},
                  {"history": meta["history"], "forward": fwd, "train_wall_seconds": round(wall, 1),
                   "steady_train_over_forward": ratio(sum(steady) / len(steady), fwd_rate)})


if __name__ == "__main__":
    main()
