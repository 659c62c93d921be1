"""An honest evaluation of a model directory on one split of a prepared dataset.

Predictions come from the same Ray Data plan and predictor as batch scoring
(:func:`skinray.inference.plan.predict_dataset`), every number from :mod:`skinray.decision.metrics`, every picture from
:mod:`skinray.render.plots`, so evaluation and nightly scoring cannot disagree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from skinray import SkinrayError
from skinray.config import SkinrayConfig
from skinray.data.prepare import data_fingerprint, load_prepared
from skinray.data.prepared import dx_codes
from skinray.decision import metrics, promises
from skinray.decision.operating_point import describe
from skinray.inference import engines, plan
from skinray.inference.predictor import WORKER_COLUMNS
from skinray.io import storage
from skinray.model import ood, views
from skinray.model.artifact import ModelArtifact
from skinray.render import plots, review_page

log = logging.getLogger("skinray.evaluate")


@dataclass(frozen=True)
class EvaluationReport:
    """``evaluate``: ranking and decision metrics of one split at the model's stored operating point."""

    roc_auc: float | None  # how the images rank, with its 95% interval, and calibration
    roc_auc_ci95: tuple[float | None, float | None]
    ece: float | None
    threshold: float  # the decisions at the stored operating point
    sensitivity: float | None
    specificity: float | None
    diagnosis_balanced_accuracy: float | None  # models with a diagnosis output and labelled diagnoses
    split: str  # on what
    n: int
    failed: int
    record: dict[str, Any] = field(repr=False)  # metrics.json

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EvaluationReport:
        ranking, at = record.get("ranking") or {}, record["at_threshold"]
        ci = record.get("roc_auc_ci95") or (None, None)
        return cls(split=record["split"], n=int(record["n"]), failed=int(record.get("failed", 0)),
                   roc_auc=ranking.get("roc_auc"), roc_auc_ci95=(ci[0], ci[1]), ece=ranking.get("ece"),
                   threshold=float(at["threshold"]), sensitivity=at.get("sensitivity"),
                   specificity=at.get("specificity"),
                   diagnosis_balanced_accuracy=(record.get("diagnosis") or {}).get("balanced_accuracy"),
                   record=record)

PREDICTION_COLUMNS = ["isic_id", "image_uri", "label", "prob_malignant", "logit_malignant", "predicted", "confidence",
                      "threshold", "dx_pred", "dx_probs", "ood_score", "out_of_distribution", "error", "dx",
                      "age_approx", "sex", "anatom_site_general", "lesion_id", "source"]


def predict_split(cfg: SkinrayConfig, rows: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """Score ``rows`` with the evaluate model through the batch-scoring plan, in input order; and the views per
    scored image."""
    rows = rows.reset_index(drop=True).assign(input_row=lambda d: range(len(d)))
    ds, _ = plan.predict_dataset(rows, cfg.evaluate.model, cfg, cfg.evaluate.batch_size)
    batches = list(plan.pipeline_batches(ds, cfg))
    n = sum(len(b) for b in batches)
    if n != len(rows):
        raise SkinrayError(f"evaluation returned {n} rows for {len(rows)}")
    out = pd.concat(batches, ignore_index=True).sort_values("input_row").reset_index(drop=True)
    return out.drop(columns=WORKER_COLUMNS), views.per_image(out["_views"].value_counts().to_dict())


def in_training_data(model_data: dict[str, Any], split: str, fingerprint: str) -> bool:
    """Whether ``split`` of the prepared dataset with this fingerprint is in the model's training data: the train
    split always, the val split too for a cross-validated model (``train.folds``). Figures on it are not held out."""
    trained = model_data.get("trained_on_splits") or ["train"]
    return (split in trained or split == "all") and model_data.get("fingerprint") == fingerprint


def _markdown(report: dict[str, Any], art: ModelArtifact, split: str, pngs: list[str]) -> str:
    r, a5, at = report["ranking"], report["at_0.5"], report["at_threshold"]
    ci = report.get("roc_auc_ci95") or [None, None]
    cal = art.meta.calibration

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"# Evaluation on the {split} split",
        "",
        *([f"**The model was trained on this {split} split: these figures are not a held-out estimate.**", ""]
          if report.get("in_training_data") else []),
        f"{report['n']} images, {report['n_pos']} malignant. Model trained on "
        f"{art.meta.data.get('train_rows')} images; threshold {at['threshold']:.3f} chosen on "
        f"{(art.meta.validation or {}).get('scores', 'the val split')} "
        f"({describe(art.meta.threshold)}); probabilities calibrated by {cal.description} "
        f"(T = {cal.temperature:.3f}, bias {cal.bias:+.3f}); "
        f"scored with {views.Views.from_record(report).describe(report.get('views_per_image'))}.",
        "",
        *_outside_lines(report.get("out_of_distribution") or {}),
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
    dx = report.get("diagnosis")
    if dx and dx.get("n"):
        lines += [f"## Diagnoses ({len(dx['classes'])} classes)", "",
                  f"Balanced multiclass accuracy **{f(dx['balanced_accuracy'])}** (the ISIC 2018 Task 3 metric), "
                  f"accuracy {f(dx['accuracy'])}, over {dx['n']} images with a known diagnosis.", "",
                  "| diagnosis | n | recall |", "| --- | --- | --- |"]
        lines += [f"| {c} | {dx['support'][c]} | {f(dx['recall'][c])} |" for c in dx["classes"]]
        lines.append("")
    def with_ci(value: Any, ci: list[float] | None) -> str:
        return f(value) if not ci else f"{f(value)} [{ci[0]:.2f}, {ci[1]:.2f}]"

    for name, groups in report.get("groups", {}).items():
        lines += [f"## By {name}", "", "| group | n | malignant | ROC-AUC | sensitivity [exact 95% CI] | "
                  "specificity [exact 95% CI] |", "| --- | --- | --- | --- | --- | --- |"]
        for g in groups:
            lines.append(f"| {g['group']} | {g['n']} | {g['n_pos']} | {f(g.get('roc_auc'))} | "
                         f"{with_ci(g.get('sensitivity'), g.get('sensitivity_ci95'))} | "
                         f"{with_ci(g.get('specificity'), g.get('specificity_ci95'))} |")
        lines.append("")
    lines += _sources_markdown(report.get("sources") or {}, f)
    lines += [f"![{p}]({p})" for p in pngs]
    return "\n".join(lines) + "\n"


def _outside_lines(o: dict[str, Any]) -> list[str]:
    if not o.get("guard"):
        return [f"Out-of-distribution guard: {o.get('described', 'absent')}.", ""]
    return [f"Out-of-distribution guard: {o['flagged']} of {o['scored']} images ({o['share']:.1%}) flagged as not "
            "like the training images; every figure below is on the other (in-distribution) images.", ""]


def _sources_markdown(sources: dict[str, dict[str, Any]], f: Any) -> list[str]:
    """Every headline figure per source, with its interval: a pooled figure hides the source a model fails on."""
    if not sources:
        return []

    def ci(fig: dict[str, Any], name: str) -> str:
        bounds = fig.get(f"{name}_ci95")
        return f(fig.get(name)) + (f" [{bounds[0]:.2f}, {bounds[1]:.2f}]" if bounds else "")

    lines = ["## By source", "", "| source | n | malignant | melanoma | ROC-AUC [95% CI] | sensitivity | "
             "melanoma sensitivity | specificity | ECE |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, fig in sources.items():
        lines.append(f"| {name} | {fig['n']} | {fig['n_pos']} | {fig['n_melanoma']} | {ci(fig, 'roc_auc')} | "
                     f"{ci(fig, 'sensitivity')} | {ci(fig, 'melanoma_sensitivity')} | {ci(fig, 'specificity')} | "
                     f"{f(fig.get('ece'))} |")
    lines += ["", "ECE depends on how common malignancy is: on a source enriched in melanoma it does not carry over "
              "to practice (ROC-AUC and sensitivity do).", ""]
    return lines


def evaluate(cfg: SkinrayConfig) -> EvaluationReport:
    """Metrics, plots and pages of one split; returns the metrics (also written to ``metrics.json``)."""
    e, st = cfg.evaluate, cfg.storage
    if not e.model or not e.prepared or not e.out:
        raise SkinrayError("evaluate needs --model, --prepared and --out")
    art = ModelArtifact.open(e.model, st)
    engines.check_engine(art, cfg.inference.engine)
    engines.check_loads(art, cfg.inference.engine)
    df = load_prepared(e.prepared, st)
    rows = df if e.split == "all" else df[df["split"] == e.split]
    if rows.empty:
        raise SkinrayError(f"{e.prepared}: the {e.split} split is empty")
    seen = in_training_data(art.meta.data, e.split, data_fingerprint(e.prepared, st))
    if seen:
        log.warning("the model was trained on the %s split of %s: these figures are not a held-out estimate",
                    e.split, e.prepared)
    log.info("evaluating %s %s images with %s", f"{len(rows):,}", e.split, cfg.inference.engine)
    pred, views_per_image = predict_split(cfg, rows)
    failed = pred[pred["error"].notna()]
    scored = pred[pred["error"].isna()]
    outside = scored["out_of_distribution"].fillna(False).astype(bool)
    ok = scored[~outside]  # the figures are the in-distribution images'; the flagged share is reported beside them
    if ok.empty:
        raise SkinrayError(f"every scored image of the {e.split} split is out of distribution for this model")
    y, p, thr = ok["label"].to_numpy(int), ok["prob_malignant"].to_numpy(float), art.threshold
    report = metrics.full_report(y, p, thr, n_boot=cfg.metrics.bootstrap)
    ok = ok.assign(age_band=ok["age_approx"].map(metrics.age_band))
    report["groups"] = {
        "anatom_site_general": metrics.grouped_report(ok, "anatom_site_general", thr),
        "age_band": metrics.grouped_report(ok, "age_band", thr),
    }
    if "dx" in ok and ok["dx"].notna().any():  # which diagnoses are missed (malignant) or flagged (benign)
        report["groups"]["dx"] = metrics.grouped_report(ok, "dx", thr)
    report["sources"] = promises.by_source(ok, thr, cfg.metrics.bootstrap)
    if art.diagnoses:
        codes = dx_codes(ok)
        truth = codes.astype(object).where(codes.notna(), None)
        report["diagnosis"] = metrics.multiclass_report(truth.to_numpy(), ok["dx_pred"].to_numpy(), art.diagnoses)
    report["out_of_distribution"] = {"guard": art.meta.ood is not None, "flagged": int(outside.sum()),
                                     "scored": int(len(scored)), "share": float(outside.mean()) if len(scored) else 0.0,
                                     "described": ood.describe(art.meta.ood)}
    report.update(split=e.split, in_training_data=seen, model_id=art.model_id, failed=int(len(failed)),
                  threshold_policy=art.meta.threshold.model_dump(), calibration=art.meta.calibration.model_dump(),
                  **art.views(cfg.inference.tta).record(), views_per_image=views_per_image)
    drawings = plots.labelled_drawings(y, p, thr)
    if report.get("diagnosis", {}).get("n"):
        drawings["diagnosis_confusion.png"] = lambda path: plots.plot_diagnosis_confusion(report["diagnosis"], path)
    pictures = plots.pngs(drawings)
    plots.publish(pictures, e.out, st)
    names = list(pictures)
    storage.write_parquet(pa.Table.from_pandas(pred[PREDICTION_COLUMNS], preserve_index=False),
                          storage.join(e.out, "predictions.parquet"), st)
    markdown = _markdown(report, art, e.split, names)
    storage.write_text(storage.join(e.out, "report.md"), markdown, st)
    storage.write_text(storage.join(e.out, "report.html"), review_page.evaluation_page(
        report, f"Evaluation on the {e.split} split", markdown.split("\n\n")[1], pictures), st)
    storage.write_text(storage.join(e.out, "config.yaml"), cfg.to_yaml(), st)
    storage.write_json(storage.join(e.out, "metrics.json"), report, st)
    result = EvaluationReport.from_record(report)
    log.info("%s split: ROC-AUC %s, sensitivity %s, specificity %s at threshold %.3f; wrote %s", e.split,
             *(("n/a" if v is None else f"{v:.3f}") for v in (result.roc_auc, result.sensitivity, result.specificity)),
             result.threshold, e.out,
             extra={"event": {"split": e.split, "n": result.n, "failed": result.failed, "roc_auc": result.roc_auc,
                              "sensitivity": result.sensitivity, "specificity": result.specificity,
                              "threshold": result.threshold, "model_id": art.model_id}})
    return result
