"""An honest evaluation of a model directory on one split of a prepared dataset.

Predictions come from the same Ray Data pipeline and engine as batch scoring, and every number from
:mod:`skinray.metrics`, so evaluation and nightly scoring cannot disagree.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

import pandas as pd
import pyarrow as pa

from skinray import SkinrayError, inference, metrics, storage
from skinray.config import SkinrayConfig
from skinray.model import ModelArtifact
from skinray.prepare import load_prepared
from skinray.score import _pipeline

PREDICTION_COLUMNS = ["isic_id", "image_uri", "label", "prob_malignant", "predicted", "confidence", "threshold",
                      "error", "dx", "age_approx", "sex", "anatom_site_general", "lesion_id"]


def describe_policy(threshold: dict[str, Any]) -> str:
    """How the stored threshold was chosen, in words a report reader can check."""
    policy = threshold.get("policy", "unknown")
    if policy != "sensitivity":
        return str(policy)
    text = f"sensitivity ≥ {threshold['target_sensitivity']:.2f}"
    if threshold.get("confidence") is not None:
        text += (f" with {threshold['confidence']:.0%} confidence: validation sensitivity "
                 f"{threshold['sensitivity']:.3f}, lower bound {threshold['sensitivity_lower_bound']:.3f}")
        if not threshold.get("target_met", True):
            text += ", target not reachable on this validation split"
    return text


def predict_split(cfg: SkinrayConfig, rows: pd.DataFrame) -> pd.DataFrame:
    """Score ``rows`` with the evaluate model through the batch-scoring pipeline, in input order."""
    scoring = cfg.model_copy(deep=True)
    scoring.score.model = storage.normalize(cfg.evaluate.model)
    scoring.score.batch_size = cfg.evaluate.batch_size
    rows = rows.reset_index(drop=True).assign(input_row=lambda d: range(len(d)))
    ds, _ = _pipeline(rows, scoring)
    out = ds.to_pandas().sort_values("input_row").reset_index(drop=True)
    if len(out) != len(rows):
        raise RuntimeError(f"evaluation returned {len(out)} rows for {len(rows)}")
    return out


def _markdown(report: dict[str, Any], meta: dict[str, Any], split: str, pngs: list[str]) -> str:
    r, a5, at = report["ranking"], report["at_0.5"], report["at_threshold"]
    ci = report.get("roc_auc_ci95") or [None, None]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"# Evaluation on the {split} split",
        "",
        f"{report['n']} images, {report['n_pos']} malignant. Model trained on "
        f"{meta['data']['train_rows']} images; threshold {at['threshold']:.3f} chosen on validation "
        f"({describe_policy(meta['threshold'])}); probabilities calibrated by "
        f"{meta['calibration']['method']} (T = {meta['calibration']['temperature']:.3f}, "
        f"bias {meta['calibration'].get('bias', 0.0):+.3f}); "
        f"{'scores averaged over flips (TTA)' if report.get('tta') else 'no test-time augmentation'}.",
        "",
        f"- ROC-AUC **{f(r['roc_auc'])}** (95% bootstrap CI {f(ci[0])}–{f(ci[1])}), PR-AUC {f(r['pr_auc'])}",
        f"- Brier {f(r['brier'])}, ECE {f(r['ece'])}, sensitivity at 90% specificity "
        f"{f(r['sensitivity_at_90_specificity'])}",
        "",
        "| metric | at 0.5 | at stored threshold |",
        "| --- | --- | --- |",
    ]
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy", "npv"):
        lines.append(f"| {key} | {f(a5.get(key))} | {f(at.get(key))} |")
    cm = at["confusion"]
    lines += ["", f"Confusion at the stored threshold: TN {cm['tn']}, FP {cm['fp']}, FN {cm['fn']}, TP {cm['tp']}.",
              ""]
    for name, groups in report.get("groups", {}).items():
        lines += [f"## By {name}", "", "| group | n | malignant | ROC-AUC | sensitivity | specificity |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for g in groups:
            lines.append(f"| {g['group']} | {g['n']} | {g['n_pos']} | {f(g.get('roc_auc'))} | "
                         f"{f(g.get('sensitivity'))} | {f(g.get('specificity'))} |")
        lines.append("")
    lines += [f"![{p}]({p})" for p in pngs]
    return "\n".join(lines) + "\n"


def evaluate(cfg: SkinrayConfig, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    e, st = cfg.evaluate, cfg.storage
    if not e.model or not e.prepared or not e.out:
        raise SkinrayError("evaluate needs --model, --prepared and --out")
    artifact = ModelArtifact.open(e.model, st)
    df = load_prepared(e.prepared, st)
    rows = df[df["split"] == e.split]
    if rows.empty:
        raise SkinrayError(f"{e.prepared}: the {e.split} split is empty")
    log(f"evaluating {len(rows):,} {e.split} images with {cfg.score.engine}")
    pred = predict_split(cfg, rows)
    failed = pred[pred["error"].notna()]
    ok = pred[pred["error"].isna()]
    y, p, thr = ok["label"].to_numpy(int), ok["prob_malignant"].to_numpy(float), artifact.threshold
    report = metrics.full_report(y, p, thr, n_boot=e.bootstrap)
    ok = ok.assign(age_band=ok["age_approx"].map(metrics.age_band))
    report["groups"] = {
        "anatom_site_general": metrics.grouped_report(ok, "anatom_site_general", thr),
        "age_band": metrics.grouped_report(ok, "age_band", thr),
    }
    if "dx" in ok and ok["dx"].notna().any():  # which diagnoses are missed (malignant) or flagged (benign)
        report["groups"]["dx"] = metrics.grouped_report(ok, "dx", thr)
    report.update(split=e.split, model_id=artifact.model_id, failed=int(len(failed)),
                  threshold_policy=artifact.meta["threshold"], calibration=artifact.meta["calibration"],
                  tta=inference.resolve_tta(artifact, cfg.score.tta))
    with tempfile.TemporaryDirectory() as tmp:
        pngs = [
            metrics.plot_roc(y, p, os.path.join(tmp, "roc.png"), threshold=thr),
            metrics.plot_pr(y, p, os.path.join(tmp, "pr.png")),
            metrics.plot_confusion(y, p, thr, os.path.join(tmp, "confusion.png")),
            metrics.plot_calibration(y, p, os.path.join(tmp, "calibration.png")),
            metrics.plot_score_histogram(p, os.path.join(tmp, "score_histogram.png"), threshold=thr, y_true=y),
        ]
        for path in pngs:
            with open(path, "rb") as fh:
                storage.write_bytes(storage.join(e.out, os.path.basename(path)), fh.read(), st)
        names = [os.path.basename(x) for x in pngs]
    storage.write_parquet(pa.Table.from_pandas(pred[PREDICTION_COLUMNS], preserve_index=False),
                          storage.join(e.out, "predictions.parquet"), st)
    storage.write_text(storage.join(e.out, "report.md"), _markdown(report, artifact.meta, e.split, names), st)
    storage.write_text(storage.join(e.out, "config.yaml"), cfg.to_yaml(), st)
    storage.write_json(storage.join(e.out, "metrics.json"), report, st)
    return report
