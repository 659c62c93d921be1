"""evaluate: the report's numbers are exactly scikit-learn's on predictions.parquet."""

import json
import os

import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from skinray.config import load_config
from skinray.inference.evaluate import evaluate

pytestmark = pytest.mark.slow


def test_metrics_equal_sklearn_on_written_predictions(model_dir, prepared, tmp_path):
    out = str(tmp_path / "report")
    cfg = load_config(overrides={"evaluate.model": model_dir, "evaluate.prepared": prepared, "evaluate.out": out,
                                 "metrics.bootstrap": 200})
    report = evaluate(cfg)
    pred = pd.read_parquet(os.path.join(out, "predictions.parquet"))
    test_rows = pd.read_parquet(os.path.join(prepared, "manifest.parquet")).query("split == 'test'")
    assert len(pred) == len(test_rows) and set(pred.isic_id) == set(test_rows.isic_id)
    outside = pred.out_of_distribution.fillna(False).astype(bool)
    ok = pred[pred.error.isna() & ~outside]  # the figures are the in-distribution images'
    o = report.record["out_of_distribution"]
    assert o["guard"] and o["flagged"] == int(outside.sum()) and o["scored"] == int(pred.error.isna().sum())
    assert (pred.loc[outside, "predicted"] == "out_of_distribution").all()
    y, p = ok.label.to_numpy(), ok.prob_malignant.to_numpy()
    thr = report.threshold
    yhat = (p >= thr).astype(int)
    at = report.record["at_threshold"]
    assert (report.sensitivity, report.specificity) == (at["sensitivity"], at["specificity"])
    assert report.roc_auc == pytest.approx(roc_auc_score(y, p))
    assert report.record["ranking"]["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert report.record["ranking"]["brier"] == pytest.approx(brier_score_loss(y, p))
    assert at["accuracy"] == pytest.approx(accuracy_score(y, yhat))
    assert at["sensitivity"] == pytest.approx(recall_score(y, yhat))
    assert at["specificity"] == pytest.approx(recall_score(1 - y, 1 - yhat))
    if yhat.sum():
        assert at["precision"] == pytest.approx(precision_score(y, yhat))
        assert at["f1"] == pytest.approx(f1_score(y, yhat))
    assert (ok.predicted == pd.Series(yhat, index=ok.index).map({0: "benign", 1: "malignant"})).all()
    lo, hi = report.roc_auc_ci95
    assert lo <= report.roc_auc <= hi
    assert report.record["in_training_data"] is False  # the test split: held out
    assert json.load(open(os.path.join(out, "metrics.json")))["n"] == len(ok)
    assert "ROC-AUC" in open(os.path.join(out, "report.md")).read()
    assert "Out-of-distribution guard:" in open(os.path.join(out, "report.md")).read()
    (source, fig), = report.record["sources"].items()  # one source: its figures are the whole split's
    assert fig["n"] == len(ok) and fig["roc_auc"] == pytest.approx(report.roc_auc)
    # scored as the model was fitted: flips near its threshold only, and the report says how many views that took
    assert report.record["tta"] is True and report.record["tta_band"] is not None
    assert 1.0 <= report.record["views_per_image"] <= 3.0
    assert "logits of the threshold" in open(os.path.join(out, "report.md")).read()
    for png in ("roc.png", "pr.png", "confusion.png", "calibration.png", "score_histogram.png"):
        Image.open(os.path.join(out, png)).verify()
    assert {g["group"] for g in report.record["groups"]["age_band"]} <= {"<30", "30-44", "45-59", "60-74", "75+",
                                                                   "unknown"}
    by_dx = {g["group"]: g for g in report.record["groups"]["dx"]}  # per diagnosis: which ones are missed
    assert set(by_dx) == set(ok.dx.dropna()) | ({None} if ok.dx.isna().any() else set())
    for dx, g in by_dx.items():
        rows = ok[ok.dx.isna()] if dx is None else ok[ok.dx == dx]
        assert g["n"] == len(rows) and g["n_pos"] == int(rows.label.sum())
        if g["n_pos"]:
            assert g["sensitivity"] == pytest.approx(recall_score(rows.label, rows.prob_malignant >= thr))
    assert "## By dx" in open(os.path.join(out, "report.md")).read()
    # the seven-class view: balanced multiclass accuracy over the model's diagnoses, as sklearn computes it
    from sklearn.metrics import balanced_accuracy_score

    dx = report.record["diagnosis"]
    assert report.diagnosis_balanced_accuracy == dx["balanced_accuracy"]
    known = ok[ok.dx.str.lower().isin(dx["classes"])]
    assert dx["n"] == len(known) and set(known.dx_pred) <= set(dx["classes"])
    assert dx["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(known.dx.str.lower(), known.dx_pred))
    assert (ok.dx_probs.notna()).all() and "Diagnoses" in open(os.path.join(out, "report.md")).read()
    Image.open(os.path.join(out, "diagnosis_confusion.png")).verify()
    page = open(os.path.join(out, "report.html")).read()
    assert page.startswith("<!DOCTYPE html>") and "ROC-AUC" in page and "data:image/png;base64," in page


def test_a_split_the_model_trained_on_is_named_as_such():
    from skinray.inference.evaluate import in_training_data

    single = {"fingerprint": "f", "trained_on_splits": ["train"]}
    cross_validated = {"fingerprint": "f", "trained_on_splits": ["train", "val"]}
    assert in_training_data(single, "train", "f") and not in_training_data(single, "val", "f")
    assert in_training_data(cross_validated, "val", "f") and not in_training_data(cross_validated, "test", "f")
    assert not in_training_data(cross_validated, "val", "another dataset")
    assert in_training_data({"fingerprint": "f"}, "train", "f")  # a model from before the field: train only


def test_every_figure_per_source_and_a_source_held_out_whole(model_dir, sample, ray_session, tmp_path):
    from skinray.data.prepare import prepare

    from conftest import second_source

    second_source(tmp_path)
    pooled = str(tmp_path / "pooled")
    prepare(load_config(overrides={"prepare.out": pooled, "prepare.sources": [
        {"name": "clinic-a", "manifest": f"{sample['local']}/metadata.csv", "images": f"{sample['local']}/images"},
        {"name": "clinic-b", "manifest": str(tmp_path / "b" / "metadata.csv"),
         "images": str(tmp_path / "b" / "images")}]}))
    out = str(tmp_path / "report")
    report = evaluate(load_config(overrides={"evaluate.model": model_dir, "evaluate.prepared": pooled,
                                             "evaluate.out": out, "metrics.bootstrap": 100}))
    pred = pd.read_parquet(os.path.join(out, "predictions.parquet"))
    called = pred[pred.error.isna() & ~pred.out_of_distribution.fillna(False).astype(bool)]
    sources = report.record["sources"]
    assert set(sources) == {"clinic-a", "clinic-b"}
    for name, fig in sources.items():
        rows = called[called.source == name]
        assert fig["n"] == len(rows) and fig["n_pos"] == int(rows.label.sum())
        if rows.label.nunique() == 2:
            assert fig["roc_auc"] == pytest.approx(roc_auc_score(rows.label, rows.prob_malignant))
            assert fig["roc_auc_ci95"][0] <= fig["roc_auc"] <= fig["roc_auc_ci95"][1]
        flagged = rows.prob_malignant >= report.threshold
        if rows.label.sum():
            assert fig["sensitivity"] == pytest.approx(flagged[rows.label == 1].mean())
    assert "## By source" in open(os.path.join(out, "report.md")).read()
    # --split all: every row of a dataset, for a source the model never saw
    whole = evaluate(load_config(overrides={"evaluate.model": model_dir, "evaluate.prepared": pooled,
                                            "evaluate.out": str(tmp_path / "all"), "evaluate.split": "all",
                                            "metrics.bootstrap": 50}))
    kept = pd.read_parquet(os.path.join(pooled, "manifest.parquet"))
    assert whole.record["out_of_distribution"]["scored"] + whole.failed == len(kept)
