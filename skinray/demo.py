"""The whole pipeline on an embedded default: synth → prepare → train → evaluate → score → query.

No internet and no data needed; ``weights`` and ``ham10000`` switch the same demo to real weights and images.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from skinray.config import SkinrayConfig, with_values
from skinray.data.prepare import PrepareReport
from skinray.inference.evaluate import EvaluationReport
from skinray.io import storage
from skinray.runtime import EXPORT_MODULES, require_train_extra
from skinray.scoring.record import RunRecord

log = logging.getLogger("skinray.demo")

# Demo-sized versions of the default recipe. Without weights the whole (small, 64 px) base learns from scratch:
# measured here, 1,500 synthetic images reach validation AUC ~0.8 in 12-20 epochs of ~4 s, while 480 images or
# 4 epochs stay at chance. No second phase, no early stopping (the validation split is small and noisy; the best
# epoch is still kept). 256 head units, not 64: Adam's first steps push each unit's weights on the (non-negative)
# pooled features all one way, and 90-95% of the units end up off for every image; with 64, 4-5 were left, and a
# run whose last ones died scored every image alike (issue 25; bench/RESULTS.md). With real weights: a short head
# phase and a short fine-tuning phase.
SMALL = {"image.size": 64, "train.alpha": 0.35, "train.weights": "none", "train.epochs": 20,
         "train.fine_tune_epochs": 0, "train.early_stopping_patience": 0, "train.dense_units": 256}
REAL = {"image.size": 224, "train.alpha": 1.0, "train.epochs": 3, "train.fine_tune_epochs": 2}


@dataclass
class DemoResult:
    text: str
    prepare: PrepareReport
    evaluate: EvaluationReport
    score: RunRecord


def run_demo(out: str, n: int = 1500, weights: str | None = None, ham10000: str | None = None,
             epochs: int | None = None, workers: int = 2, base_config: SkinrayConfig | None = None) -> DemoResult:
    from skinray.data.prepare import prepare
    from skinray.data.synth import generate
    from skinray.decision.operating_point import describe
    from skinray.inference.evaluate import evaluate
    from skinray.query import preset_sql, run_query
    from skinray.scoring.run import score
    from skinray.train.driver import train

    require_train_extra("the demo (it trains a model)", EXPORT_MODULES)  # before the first stage's work
    t0 = time.time()
    out = storage.normalize(out)
    cfg = base_config or SkinrayConfig()
    settings: dict[str, Any] = dict(REAL if weights else SMALL)
    if weights:
        settings["train.weights"] = weights
    if epochs:
        settings["train.epochs"] = epochs
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    if ham10000:
        manifest = os.path.join(ham10000, "HAM10000_metadata.csv")
        images_root = score_input = os.path.join(ham10000, "images")
        log.info("using HAM10000 from %s", ham10000)
    else:
        data = os.path.join(out, "data")
        log.info("synth: %d synthetic images in %s", n, data)
        generate(data, n, image_size=128, schema="isic", seed=7, corrupt=3, missing=3, storage=cfg.storage)
        manifest, images_root = os.path.join(data, "metadata.csv"), os.path.join(data, "images")
        score_input = images_root
    settings.update({
        "prepare.manifest": manifest, "prepare.images": images_root, "prepare.out": os.path.join(out, "prepared"),
        "train.prepared": os.path.join(out, "prepared"), "train.out": os.path.join(out, "model"),
        "train.workers": workers,
        "evaluate.model": os.path.join(out, "model"), "evaluate.prepared": os.path.join(out, "prepared"),
        "evaluate.out": os.path.join(out, "report"),
        "score.model": os.path.join(out, "model"), "score.input": score_input, "score.images": images_root,
        "score.out": os.path.join(out, "nightly"), "score.date": today,
    })
    cfg = with_values(cfg, settings)

    prep = prepare(cfg)
    meta = train(cfg)
    ev = evaluate(cfg)
    run = score(cfg)
    top = run_query(cfg.score.out, preset_sql("top_suspicious", 5, today), cfg.storage)
    counts = run_query(cfg.score.out, preset_sql("daily_counts"), cfg.storage)

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    ci, dx = ev.roc_auc_ci95, ev.diagnosis_balanced_accuracy
    lines = [
        "skinray demo finished in %.0f s" % (time.time() - t0),
        f"  data      {prep.rows_in} rows → kept {prep.kept}, rejected {prep.rejected} {prep.rejected_by_reason}",
        "  splits    " + ", ".join(f"{k} {v['rows']}" for k, v in prep.splits.items()),
        f"  model     {cfg.train.out} (best epoch {meta.training['best_epoch']}/{meta.training['epochs_run']}, "
        f"threshold {meta.threshold.threshold:.3f}: {describe(meta.threshold)}, "
        f"ONNX parity {meta.onnx.parity_max_abs_diff if meta.onnx else float('nan'):.1e})",
        f"  test      ROC-AUC {f(ev.roc_auc)} [{f(ci[0])}, {f(ci[1])}], sensitivity {f(ev.sensitivity)}, "
        f"specificity {f(ev.specificity)}, ECE {f(ev.ece)}"
        + (f", diagnosis balanced accuracy {f(dx)}" if dx is not None else ""),
        f"  scored    {run.scored} images, {run.failed} failed {run.failed_by_reason} "
        f"({run.images_per_second_overall} img/s)",
        "",
        "files written:",
        f"  {cfg.prepare.out}/manifest.parquet, rejects.parquet, report.json",
        f"  {cfg.train.out}/model.keras, model.onnx, skinray.json",
        f"  {cfg.evaluate.out}/report.md, metrics.json, predictions.parquet, " + ", ".join(
            p for p in ("roc.png", "pr.png", "confusion.png", "calibration.png", "score_histogram.png")),
        f"  {cfg.score.out}/scores/ (a Delta table, version {run.table_version}), "
        f"runs/{run.run_id}/run.json, report.html, " + ", ".join(run.pngs),
        "",
        "top suspicious images today:",
        top.to_string(index=False),
        "",
        "daily counts:",
        counts.to_string(index=False),
    ]
    return DemoResult("\n".join(lines), prep, ev, run)
