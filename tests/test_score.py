"""Batch scoring: every input exactly once, bad files as error rows, resume without gaps or duplicates."""

import io
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinray import SkinrayError, storage
from skinray.config import load_config
from skinray.query import run_query, scores_dataset
from skinray.score import score

from conftest import BUCKET, REPO

pytestmark = pytest.mark.slow
BAD = {"zero.jpg": "empty", "text.jpg": "not_image", "truncated.jpg": "undecodable", "bomb.png": "too_many_pixels"}
VALID_ODD = ["gray.jpg", "cmyk.jpg", "deep16.png", "alpha.png"]


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_folder(sample, tmp_path_factory):
    """Good sample images plus every kind of awkward file, locally and on S3."""
    root = tmp_path_factory.mktemp("score-input")
    good = sorted(p for p in os.listdir(f"{sample['local']}/images")
                  if p[:-4] not in set(sample["summary"]["corrupt_ids"]))[:40]
    for name in good:
        shutil.copy(f"{sample['local']}/images/{name}", root / name)
    base = Image.open(root / good[0]).convert("RGB")
    odd = root / "odd"
    odd.mkdir()
    (odd / "gray.jpg").write_bytes(_png(base.convert("L"), "JPEG"))
    (odd / "cmyk.jpg").write_bytes(_png(base.convert("CMYK"), "JPEG"))
    (odd / "deep16.png").write_bytes(_png(Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257))))
    (odd / "alpha.png").write_bytes(_png(base.convert("RGBA")))
    (odd / "zero.jpg").write_bytes(b"")
    (odd / "text.jpg").write_bytes(b"<Error><Code>AccessDenied</Code></Error>")
    (odd / "truncated.jpg").write_bytes((root / good[1]).read_bytes()[:300])
    (odd / "bomb.png").write_bytes(_png(Image.new("L", (6000, 6000))))  # 36 M pixels in a few KB
    s3 = f"s3://{BUCKET}/score-input"
    storage.upload_dir(str(root), s3)
    return {"local": str(root), "s3": s3, "n": len(good) + 8}


def _cfg(model_dir, input_uri, out, **extra):
    return load_config(overrides={"score.model": model_dir, "score.input": input_uri, "score.out": out,
                                  "score.date": "2026-11-25", "score.batch_size": 4,
                                  "score.max_failure_fraction": 0.5, "image.max_pixels": 20_000_000, **extra})


@pytest.mark.parametrize("where", ["local", "s3"])
def test_every_input_once_with_errors_recorded(where, image_folder, model_dir, ray_session, tmp_path):
    out = str(tmp_path / "scores") if where == "local" else f"s3://{BUCKET}/scores-{os.urandom(3).hex()}"
    summary = score(_cfg(model_dir, image_folder[where], out))
    df = scores_dataset(out).to_table().to_pandas()
    assert len(df) == image_folder["n"] == summary["rows"]
    assert df["image_uri"].is_unique and df["input_row"].is_unique
    by_name = df.set_index(df["image_uri"].str.rsplit("/", n=1).str[-1])
    for name, reason in BAD.items():
        assert by_name.loc[name, "error"].startswith(reason), (name, by_name.loc[name, "error"])
        assert pd.isna(by_name.loc[name, "prob_malignant"])
    for name in VALID_ODD:
        assert pd.isna(by_name.loc[name, "error"]) and 0 <= by_name.loc[name, "prob_malignant"] <= 1
    ok = df[df.error.isna()]
    assert ((ok.prob_malignant >= ok.threshold) == (ok.predicted == "malignant")).all()
    assert summary["failed"] == len(BAD) and summary["failed_by_reason"] == {r: 1 for r in BAD.values()}
    assert str(df["run_id"].iloc[0]) == summary["run_id"] and len(df.model_id.iloc[0]) == 16
    # the operating point travels with every run: how the threshold was chosen and how scores were calibrated
    assert summary["threshold_policy"]["policy"] == "youden" and {"temperature", "bias"} <= set(summary["calibration"])
    assert summary["tta"] is True
    run_dir = storage.join(out, "runs", summary["run_id"])
    for name in ("run.json", "_SUCCESS", "score_histogram.png", "top_suspicious.png", "config.yaml"):
        assert storage.exists(storage.join(run_dir, name)), name
    assert not storage.exists(storage.join(out, "_staging", summary["run_id"]))


def test_rerun_is_a_noop_and_new_run_id_adds_a_run(image_folder, model_dir, ray_session, tmp_path):
    out = str(tmp_path / "scores")
    first = score(_cfg(model_dir, image_folder["local"], out))
    again = score(_cfg(model_dir, image_folder["local"], out))
    assert again["already_complete"] and again["run_id"] == first["run_id"]
    other = score(_cfg(model_dir, image_folder["local"], out, **{"score.run_id": "manual-2", "score.tta": False}))
    assert first["tta"] is True and other["tta"] is False  # the model's TTA setting unless overridden
    counts = run_query(out, "SELECT run_id, count(*) AS n FROM scores GROUP BY run_id ORDER BY run_id")
    assert sorted(counts["run_id"].astype(str)) == sorted([first["run_id"], other["run_id"]])
    assert counts["n"].tolist() == [image_folder["n"]] * 2


def test_killed_run_resumes_without_gaps_or_duplicates(image_folder, model_dir, ray_session, tmp_path):
    out = tmp_path / "scores"
    args = [sys.executable, "-m", "skinray", "score", "--model", model_dir, "--input", image_folder["local"],
            "--out", str(out), "--date", "2026-11-25", "--run-id", "crash", "--batch-size", "1", "--actors", "1",
            "--set", "score.part_rows=3", "--set", "score.max_failure_fraction=0.5",
            "--set", "image.max_pixels=20000000"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    staging = out / "_staging" / "crash"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(staging.glob("part-*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    parts_before = len(list(staging.glob("part-*.parquet")))
    assert parts_before >= 2, "the run was not caught midway"
    summary = score(_cfg(model_dir, image_folder["local"], str(out), **{"score.run_id": "crash"}))
    assert summary["resumed_rows"] >= 6 and summary["scored_this_attempt"] < image_folder["n"]
    df = scores_dataset(str(out)).to_table().to_pandas()
    assert len(df) == image_folder["n"] and df["input_row"].is_unique
    assert sorted(df["input_row"]) == list(range(image_folder["n"]))


def test_onnx_and_tensorflow_engines_agree(image_folder, model_dir, ray_session, tmp_path):
    a = score(_cfg(model_dir, image_folder["local"], str(tmp_path / "onnx")))
    b = score(_cfg(model_dir, image_folder["local"], str(tmp_path / "tf"), **{"score.engine": "tf"}))
    assert a["engine"] == "onnx" and b["engine"] == "tf"
    pa_ = scores_dataset(str(tmp_path / "onnx")).to_table().to_pandas().set_index("image_uri").sort_index()
    pb = scores_dataset(str(tmp_path / "tf")).to_table().to_pandas().set_index("image_uri").sort_index()
    diff = (pa_.prob_malignant - pb.prob_malignant).abs().max()
    assert diff < 1e-4


def test_manifest_input_carries_labels_and_writes_metrics(sample, model_dir, ray_session, tmp_path):
    out = str(tmp_path / "scores")
    summary = score(_cfg(model_dir, f"{sample['local']}/metadata.csv", out,
                         **{"score.images": f"{sample['local']}/images"}))
    df = scores_dataset(out).to_table().to_pandas()
    assert len(df) == sample["summary"]["n"]
    assert set(df.loc[df.error.notna(), "isic_id"]) == set(sample["summary"]["missing_ids"]) | set(
        sample["summary"]["corrupt_ids"])
    assert df["label"].notna().all() and "metrics" in summary
    assert storage.exists(storage.join(out, "runs", summary["run_id"], "roc.png"))


def test_failure_share_over_the_limit_fails_but_keeps_rows(image_folder, model_dir, ray_session, tmp_path):
    out = str(tmp_path / "scores")
    with pytest.raises(SkinrayError, match="could not be scored"):
        score(_cfg(model_dir, image_folder["local"], out, **{"score.max_failure_fraction": 0.01}))
    df = scores_dataset(out).to_table().to_pandas()
    assert len(df) == image_folder["n"]
