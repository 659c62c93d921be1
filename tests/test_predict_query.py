import os

import numpy as np
import pytest
from PIL import Image

from skinray.config import load_config
from skinray.inference.predict import predict
from skinray.query import preset_sql, query, run_query
from skinray.scoring.run import score

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_predict_table_and_contact_sheet(sample, model_dir, tmp_path):
    images = sorted(os.listdir(f"{sample['local']}/images"))[:5]
    paths = [f"{sample['local']}/images/{p}" for p in images] + [str(tmp_path / "missing.jpg")]
    sheet = str(tmp_path / "sheet.png")
    df = predict(model_dir, paths, sheet=sheet)
    assert len(df) == 6 and df["error"].iloc[-1].startswith("missing")
    ok = df[df.error.isna()]
    assert ok["prob_malignant"].between(0, 1).all()
    assert set(ok["predicted"]) <= {"benign", "malignant", "out_of_distribution"}
    assert ok["ood_score"].notna().all()  # the guard's score, from the same engine call
    Image.open(sheet).verify()
    proc = run_cli("predict", "--model", model_dir, *paths[:2], "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("image,prob_malignant,predicted,confidence,dx_pred,ood_score,error")
    # the same predictor as batch scoring: a prediction here is the score a nightly run gives the same image
    from skinray.inference.predictor import ImagePredictor

    batch = ImagePredictor(model_dir).score_uris(paths[:5])[0]
    assert np.allclose(batch["prob_malignant"], df["prob_malignant"].iloc[:5])


def test_a_sheet_that_cannot_be_written_is_one_line_before_any_image_is_scored(tmp_path, monkeypatch):
    import tempfile

    from skinray import SkinrayError

    (tmp_path / "file").write_text("x")
    model = str(tmp_path / "no-model")  # never opened: the sheet is checked first
    for sheet, message in [(tmp_path / "file" / "sheet.png", "is a file, not a folder"),
                           (tmp_path / "file" / "a" / "sheet.png", "is a file, not a folder"),
                           (tmp_path, "is a folder"), ("s3://bucket/sheet.png", "local file")]:
        with pytest.raises(SkinrayError, match=message):
            predict(model, ["x.jpg"], sheet=str(sheet))

    def denied(**kw):
        raise PermissionError(13, "Permission denied", kw.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # a read-only folder (tests run as root, who may write anywhere)
    with pytest.raises(SkinrayError, match="cannot be written: .*: Permission denied"):
        predict(model, ["x.jpg"], sheet=str(tmp_path / "ro" / "sheet.png"))
    proc = run_cli("predict", "--model", model, "x.jpg", "--sheet", str(tmp_path / "file" / "sheet.png"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "is a file, not a folder" in lines[0], proc.stderr


def test_predict_explain_puts_a_saliency_overlay_beside_each_image(sample, model_dir, tmp_path):
    paths = [f"{sample['local']}/images/{p}" for p in sorted(os.listdir(f"{sample['local']}/images"))[:3]]
    plain, explained = str(tmp_path / "plain.png"), str(tmp_path / "explained.png")
    predict(model_dir, paths, sheet=plain)
    proc = run_cli("predict", "--model", model_dir, *paths, "--sheet", explained, "--explain")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(plain) as a, Image.open(explained) as b:
        assert b.size[0] * b.size[1] > 1.5 * a.size[0] * a.size[1]  # twice the tiles: image, then its overlay
        assert len(set(b.convert("RGB").getdata())) > len(set(a.convert("RGB").getdata()))  # the heat colours
    alone = run_cli("predict", "--model", model_dir, *paths, "--explain")
    assert alone.returncode == 2 and "give --sheet" in alone.stderr and "Traceback" not in alone.stderr


def test_query_presets_and_sql(sample, model_dir, ray_session, tmp_path):
    out = str(tmp_path / "scores")
    for date in ("2026-11-24", "2026-11-25"):
        score(load_config(overrides={"score.model": model_dir, "score.input": f"{sample['local']}/images",
                                     "score.out": out, "score.date": date, "score.max_failure_fraction": 0.2}))
    counts = run_query(out, preset_sql("daily_counts"))
    assert counts["scored_date"].astype(str).tolist() == ["2026-11-24", "2026-11-25"]
    top = run_query(out, preset_sql("top_suspicious", 3, "2026-11-25"))
    assert len(top) == 3 and top["prob_malignant"].is_monotonic_decreasing and top["dx_pred"].notna().all()
    assert '"predicted"' in query(out, "SELECT predicted, count(*) AS n FROM scores GROUP BY 1", fmt="json")
    proc = run_cli("query", out, "--top-suspicious", "2", "--format", "csv")
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 3
    bad = run_cli("query", out, "SELECT nope FROM scores")
    assert bad.returncode == 2 and "query failed" in bad.stderr
    old = run_cli("query", out, "--daily-counts", "--as-of", "1", "--format", "csv")
    assert old.returncode == 0 and old.stdout.count("2026-11-2") == 1  # version 1 held the first night only
    runs = run_cli("query", out, "SELECT run_id, scored_date, submission FROM runs", "--format", "json")
    assert runs.returncode == 0 and len([line for line in runs.stdout.splitlines() if line.startswith("{")]) == 2
