"""Batch scoring's contract: every input exactly once, bad files as error rows, one commit per submission, a night
scored once however often it is submitted, resume without gaps or duplicates, runs that cannot be confused with each
other, and readers that never see a failed or half-committed run."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import duckdb
import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from PIL import Image

from skinray import SkinrayError
from skinray.config import load_config
from skinray.io import storage
from skinray.model.artifact import ModelArtifact
from skinray.query import preset_sql, run_query, scores_dataset
from skinray.scoring import record as records, runs, table as scores_table
from skinray.scoring.run import score

from conftest import BUCKET, FAILED_RUN_JSON_KEYS_V0, REPO, RUN_JSON_ADDED, RUN_JSON_KEYS_V0

pytestmark = pytest.mark.slow
BAD = {"zero.jpg": "empty", "text.jpg": "not_image", "truncated.jpg": "undecodable", "bomb.png": "too_many_pixels"}
VALID_ODD = ["gray.jpg", "cmyk.jpg", "deep16.png", "alpha.png"]
DATE = "2026-11-25"


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_folder(sample, tmp_path_factory):
    """Good sample images, every kind of awkward file, and what a folder collects over time (hidden files, an
    earlier run's Parquet output), locally and on S3."""
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
    (root / "_thumbs").mkdir()
    (root / "_thumbs" / good[0]).write_bytes((root / good[0]).read_bytes())
    (root / ".DS_Store").write_bytes(b"x")
    pd.DataFrame({"isic_id": ["x"], "prob": [0.5]}).to_parquet(root / "old-output.parquet")  # never a manifest
    s3 = f"s3://{BUCKET}/score-input"
    storage.upload_dir(str(root), s3)
    return {"local": str(root), "s3": s3, "n": len(good) + 8, "good": good}


def _cfg(model_dir, input_uri, out, **extra):
    return load_config(overrides={"score.model": model_dir, "score.input": input_uri, "score.out": out,
                                  "score.date": DATE, "score.batch_size": 4, "score.max_failure_fraction": 0.5,
                                  "image.max_pixels": 20_000_000, **extra})


def _rows(out, **kw):
    return scores_dataset(out, **kw).to_table().to_pandas()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_every_input_once_with_errors_recorded(where, image_folder, model_dir, ray_session, tmp_path):
    out = str(tmp_path / "scores") if where == "local" else f"s3://{BUCKET}/scores-{os.urandom(3).hex()}"
    summary = score(_cfg(model_dir, image_folder[where], out))
    df = _rows(out)
    assert len(df) == image_folder["n"] == summary.rows
    assert df["image_uri"].is_unique and df["input_row"].is_unique
    by_name = df.set_index(df["image_uri"].str.rsplit("/", n=1).str[-1])
    for name, reason in BAD.items():
        assert by_name.loc[name, "error"].startswith(reason), (name, by_name.loc[name, "error"])
        assert pd.isna(by_name.loc[name, "prob_malignant"])
    for name in VALID_ODD:
        assert pd.isna(by_name.loc[name, "error"]) and 0 <= by_name.loc[name, "prob_malignant"] <= 1
    ok = df[df.error.isna()]
    called = ok[~ok.out_of_distribution.astype(bool)]  # the guard's flagged images get no benign/malignant call
    assert ((called.prob_malignant >= called.threshold) == (called.predicted == "malignant")).all()
    assert (ok.loc[ok.out_of_distribution.astype(bool), "predicted"] == "out_of_distribution").all()
    assert ok["dx_pred"].notna().all() and all(abs(sum(p for _, p in m) - 1) < 1e-4 for m in ok["dx_probs"])
    assert summary.failed == len(BAD) and summary.failed_by_reason == {r: 1 for r in BAD.values()}
    assert str(df["run_id"].iloc[0]) == summary.run_id and len(df.model_id.iloc[0]) == 16
    # the folder's own clutter is left out and counted, an old Parquet output included: never read as a manifest
    assert summary.input_kind == "images"
    assert summary.skipped_inputs == {"hidden": 2, "not_image_suffix": 1}
    # the operating point travels with every run: how the threshold was chosen and how scores were calibrated
    assert summary.threshold_policy["policy"] == "youden"
    assert {"temperature", "bias"} <= set(summary.calibration)
    assert summary.tta is True and summary.status == "succeeded" and summary.table_version == 1
    assert sum(summary.rows_by_node.values()) == summary.rows
    # the start-up split where the actors had their model loaded: the first one before any row came back
    first, last = summary.actors_ready_seconds
    assert 0 <= first <= summary.startup_seconds and first <= last, summary.record
    # the batch policy measured per actor: every row says how its call ran
    modes = summary.batch_modes
    assert sum(modes.values()) == summary.rows and set(modes) <= {"probing", "per_image", "batch"}, modes
    # and how many views its score averages: flips near the model's threshold, one view elsewhere, none if failed
    by_views = summary.views
    band = ModelArtifact.open(model_dir).meta.tta_band
    assert band is not None and summary.tta_band == band
    assert sum(by_views.values()) == summary.rows and by_views.get("0", 0) == summary.failed, by_views
    assert set(by_views) <= {"0", "1", "3"}
    run_dir = runs.run_dir(out, summary.run_id)
    for name in ("run.json", "score_histogram.png", "top_suspicious.png", "top_suspicious.csv", "worklist.csv"):
        assert storage.exists(storage.join(run_dir, name)), name
    if where == "s3":  # a browser cannot open s3://: the page shows each image's URI to copy, never a link to it
        page = storage.read_text(storage.join(run_dir, "report.html"))
        assert 'href="s3:' not in page and '<code class="uri">s3://' in page
    assert not storage.exists(storage.join(run_dir, "lease.json"))
    assert not storage.exists(storage.join(out, "_staging", summary.run_id))
    written = storage.read_json(storage.join(run_dir, "run.json"))
    assert written["status"] == "succeeded"
    # every key run.json held before it had a schema, and the two the schema adds
    assert set(written) == RUN_JSON_KEYS_V0 | RUN_JSON_ADDED, set(written) ^ (RUN_JSON_KEYS_V0 | RUN_JSON_ADDED)
    assert written["image_root"] == storage.normalize(image_folder[where]) and written["format_version"] == 1
    if where == "s3":  # nothing an `aws s3 cp --recursive` would trip over
        prefix = out[len(f"s3://{BUCKET}/"):]
        paginator = storage.boto3_client().get_paginator("list_objects_v2")
        keys = [o for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix) for o in page["Contents"]]
        assert keys and all(o["Size"] > 0 and not o["Key"].endswith("/") for o in keys)


def test_links_out_of_the_folder_are_refused_per_row_and_loops_end(image_folder, model_dir, ray_session, tmp_path):
    root = tmp_path / "in"
    shutil.copytree(image_folder["local"], root, symlinks=True)
    secret = tmp_path / "elsewhere" / "patient.jpg"
    secret.parent.mkdir()
    shutil.copy(root / image_folder["good"][0], secret)
    (root / "escape.jpg").symlink_to(secret)
    (root / "odd" / "loop").symlink_to(root)
    out = str(tmp_path / "scores")
    summary = score(_cfg(model_dir, str(root), out))
    df = _rows(out)
    assert len(df) == image_folder["n"] + 1 and df["image_uri"].is_unique
    escape = df[df.image_uri.str.endswith("/escape.jpg")]
    assert escape["error"].iloc[0].startswith("unsafe_path") and pd.isna(escape["prob_malignant"].iloc[0])
    assert summary.skipped_inputs["duplicate_link"] == 1


def test_rerun_is_a_noop_and_a_rescore_replaces_the_date_in_presets(image_folder, model_dir, ray_session, tmp_path):
    out = str(tmp_path / "scores")
    first = score(_cfg(model_dir, image_folder["local"], out))
    again = score(_cfg(model_dir, image_folder["local"], out))
    assert again.already_complete and again.run_id == first.run_id
    other = score(_cfg(model_dir, image_folder["local"], out, **{"score.run_id": "manual-2", "inference.tta": False}))
    assert first.tta is True and other.tta is False  # the model's TTA setting unless overridden
    n = image_folder["n"]
    assert run_query(out, preset_sql("daily_counts"))["images"].tolist() == [n]  # each image once per date
    assert set(_rows(out)["run_id"]) == {"manual-2"} and len(_rows(out)) == n  # the re-score replaced the night
    assert set(_rows(out, as_of=first.table_version)["run_id"]) == {first.run_id}  # what was reported before
    # a run id belongs to one date and one input
    with pytest.raises(SkinrayError, match="was used for 2026-11-25, not 2026-11-26"):
        score(_cfg(model_dir, image_folder["local"], out, **{"score.run_id": "manual-2", "score.date": "2026-11-26"}))
    with pytest.raises(SkinrayError, match="was used for other input"):
        score(_cfg(model_dir, f"{image_folder['local']}/odd", out, **{"score.run_id": "manual-2"}))


def test_killed_run_resumes_without_gaps_or_duplicates(image_folder, model_dir, ray_session, tmp_path):
    out = tmp_path / "scores"
    args = [sys.executable, "-m", "skinray", "score", "--model", model_dir, "--input", image_folder["local"],
            "--out", str(out), "--date", DATE, "--run-id", "crash", "--batch-size", "1", "--actors", "1",
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
    assert (out / "runs" / "crash" / "lease.json").exists()  # the dead owner's lease: taken over, not waited for
    summary = score(_cfg(model_dir, image_folder["local"], str(out), **{"score.run_id": "crash"}))
    assert summary.resumed_rows >= 6 and summary.scored_this_attempt < image_folder["n"]
    df = _rows(str(out))
    assert len(df) == image_folder["n"] and df["input_row"].is_unique
    assert sorted(df["input_row"]) == list(range(image_folder["n"]))


def test_a_second_process_on_a_running_run_fails_at_once(image_folder, model_dir, ray_session, tmp_path):
    out = tmp_path / "scores"
    args = [sys.executable, "-m", "skinray", "score", "--model", model_dir, "--input", image_folder["local"],
            "--out", str(out), "--date", DATE, "--run-id", "busy", "--batch-size", "1", "--actors", "1",
            "--set", "score.max_failure_fraction=0.5", "--set", "image.max_pixels=20000000"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lease = out / "runs" / "busy" / "lease.json"
    deadline = time.time() + 120
    while time.time() < deadline and not lease.exists():
        time.sleep(0.2)
    assert lease.exists()
    started = time.time()
    with pytest.raises(SkinrayError, match="being scored by another process"):
        score(_cfg(model_dir, image_folder["local"], str(out), **{"score.run_id": "busy"}))
    assert time.time() - started < 10  # refused before any scoring work
    stdout, stderr = proc.communicate(timeout=420)
    assert proc.returncode == 0, stderr[-2000:]
    df = _rows(str(out))
    assert len(df) == image_folder["n"] and df["input_row"].is_unique


def test_onnx_and_tensorflow_engines_agree(image_folder, model_dir, ray_session, tmp_path):
    a = score(_cfg(model_dir, image_folder["local"], str(tmp_path / "onnx")))
    b = score(_cfg(model_dir, image_folder["local"], str(tmp_path / "tf"), **{"inference.engine": "tf"}))
    assert a.engine == "onnx" and b.engine == "tf"
    pa_ = _rows(str(tmp_path / "onnx")).set_index("image_uri").sort_index()
    pb = _rows(str(tmp_path / "tf")).set_index("image_uri").sort_index()
    assert (pa_.logit_malignant - pb.logit_malignant).abs().max() < 1e-4
    assert (pa_.prob_malignant - pb.prob_malignant).abs().max() < 1e-5


def test_manifest_input_carries_labels_checks_template_columns_and_writes_metrics(sample, model_dir, ray_session,
                                                                                   tmp_path):
    images = tmp_path / "images" / "clinic-a"
    shutil.copytree(f"{sample['local']}/images", images)
    (tmp_path / "data").mkdir()
    shutil.copy(images / os.listdir(images)[0], tmp_path / "data" / "private.jpg")
    manifest = pd.read_csv(f"{sample['local']}/metadata.csv").assign(clinic="clinic-a")
    manifest.loc[0, "clinic"] = "../../data"  # would read from outside --images
    manifest.loc[1, "isic_id"] = "../data/private"
    manifest.to_csv(tmp_path / "m.csv", index=False)
    out = str(tmp_path / "scores")
    summary = score(_cfg(model_dir, str(tmp_path / "m.csv"), out, **{
        "score.images": str(tmp_path / "images"), "manifest.image_template": "{images}/{clinic}/{isic_id}.jpg"}))
    df = _rows(out).sort_values("input_row")
    assert len(df) == sample["summary"]["n"] and summary.input_kind == "manifest"
    assert df["error"].iloc[0].startswith("unsafe_id") and df["error"].iloc[1].startswith("unsafe_id")
    failed = set(df.loc[df.error.notna(), "isic_id"]) - set(df["isic_id"].iloc[:2])
    assert failed == set(sample["summary"]["missing_ids"]) | set(sample["summary"]["corrupt_ids"])
    assert df["label"].notna().all() and summary.metrics["n"] == summary.scored
    for name in ("roc.png", "pr.png", "confusion.png", "calibration.png", "metrics.json"):  # as evaluate writes
        assert storage.exists(storage.join(runs.run_dir(out, summary.run_id), name)), name
    page = storage.read_text(storage.join(runs.run_dir(out, summary.run_id), "report.html"))
    assert '<section id="metrics">' in page and page.count('alt="pr.png"') == 1


def test_a_manifest_runs_page_written_again_reads_its_images_under_the_same_root(sample, model_dir, ray_session,
                                                                                 tmp_path):
    """``skinray report`` of a manifest run guards its images as scoring did: the root is in run.json."""
    from skinray.scoring.report import regenerate

    images = tmp_path / "images"
    shutil.copytree(f"{sample['local']}/images", images)
    outside = tmp_path / "elsewhere.jpg"
    manifest = pd.read_csv(f"{sample['local']}/metadata.csv")
    manifest = manifest[~manifest["isic_id"].isin(sample["summary"]["corrupt_ids"] + sample["summary"]["missing_ids"])]
    manifest.head(16).to_csv(tmp_path / "m.csv", index=False)
    out = str(tmp_path / "scores")
    cfg = _cfg(model_dir, str(tmp_path / "m.csv"), out, **{"score.images": str(images)})
    run = score(cfg)
    assert run.input_kind == "manifest" and run.image_root == str(images) and run.failed == 0
    page = os.path.join(runs.run_dir(out, run.run_id), "report.html")
    shown = re.findall(r'<img src="data:image/jpeg[^"]*" alt="(?!saliency of )([^"]+)">', open(page).read())
    assert shown, "the page shows the images it lists"
    # an image of the night becomes a link out of the image root: scoring would refuse to read it, and so does
    # the page written again (before, a manifest run's page was written again without the root)
    victim = images / f"{shown[0]}.jpg"
    shutil.copy(victim, outside)
    victim.unlink()
    victim.symlink_to(outside)
    assert regenerate(out, cfg, run_id=run.run_id) == page
    again = open(page).read()
    assert f'alt="{shown[0]}"' not in again
    assert all(f'alt="{i}"' in again for i in shown[1:])


def test_a_failed_run_is_never_committed_and_stays_failed(image_folder, model_dir, ray_session, tmp_path):
    out = str(tmp_path / "scores")
    with pytest.raises(SkinrayError, match="could not be scored"):
        score(_cfg(model_dir, image_folder["local"], out, **{"score.max_failure_fraction": 0.01}))
    run_id = next(iter(os.listdir(os.path.join(out, "runs"))))
    record = records.read(out, run_id)
    assert record.status == "failed" and "could not be scored" in record.failure_reason
    assert set(storage.read_json(records.run_uri(out, run_id))) == FAILED_RUN_JSON_KEYS_V0 | RUN_JSON_ADDED
    assert len(pd.read_parquet(os.path.join(out, "runs", run_id, "rows.parquet"))) == image_folder["n"]
    assert scores_table.submissions(out, run_id) == 0  # readers never see it
    started = time.time()
    with pytest.raises(SkinrayError, match="failed: .*could not be scored.*stays failed"):
        score(_cfg(model_dir, image_folder["local"], out, **{"score.max_failure_fraction": 0.01}))
    assert time.time() - started < 15  # the recorded outcome, not a re-score
    ok = score(_cfg(model_dir, image_folder["local"], out, **{"score.run_id": "retry"}))
    assert ok.status == "succeeded" and set(_rows(out)["run_id"]) == {"retry"}


def test_a_pool_the_cluster_cannot_start_is_one_line_and_the_run_stays_retryable(image_folder, model_dir,
                                                                                   ray_session, tmp_path):
    out = str(tmp_path / "scores")
    # three one-CPU actors on a two-CPU node: the pool never fills, and nothing is sent to the two that started
    started = time.time()
    with pytest.raises(SkinrayError, match=r"did not all start within 3 s .*inference.actors"):
        score(_cfg(model_dir, image_folder["local"], out, **{"inference.actors": 3,
                                                             "inference.actor_start_seconds": 3}))
    assert time.time() - started < 120
    run_id = next(iter(os.listdir(os.path.join(out, "runs"))))
    assert records.read(out, run_id).status == "running"  # not a failed run: the same command can be tried again
    ok = score(_cfg(model_dir, image_folder["local"], out))
    assert ok.status == "succeeded" and len(_rows(out)) == image_folder["n"]


def test_input_and_output_may_not_overlap(image_folder, model_dir, tmp_path):
    with pytest.raises(SkinrayError, match="overlap"):
        score(_cfg(model_dir, image_folder["local"], os.path.join(image_folder["local"], "out")))
    with pytest.raises(SkinrayError, match="overlap"):
        score(_cfg(model_dir, str(tmp_path / "o" / "in"), str(tmp_path / "o")))


def _reader(table_uri: str, run_id: str, seen: list, stop: threading.Event) -> None:
    """DuckDB over deltalake's pyarrow dataset (outside skinray's query code), and pyarrow alone, in a loop."""
    while not stop.is_set():
        try:
            dt = DeltaTable(table_uri, storage_options=storage.delta_storage_options(table_uri))
        except Exception:  # no table yet
            time.sleep(0.05)
            continue
        ds = dt.to_pyarrow_dataset()
        con = duckdb.connect()
        con.register("s", ds)
        seen.append(con.execute(f"SELECT count(*) FROM s WHERE run_id = '{run_id}'").fetchone()[0])
        seen.append(sum(1 for r in ds.to_table(columns=["run_id"]).column("run_id").to_pylist() if r == run_id))
        time.sleep(0.02)


@pytest.mark.parametrize("where, fail_at", [("local", "after_data_files"), ("local", "after_commit"),
                                            ("s3", "after_data_files")])
def test_readers_see_none_or_all_of_a_run_killed_mid_commit(where, fail_at, image_folder, model_dir, ray_session,
                                                           tmp_path, s3_endpoint):
    out = str(tmp_path / "scores") if where == "local" else f"s3://{BUCKET}/mid-commit-{os.urandom(4).hex()}"
    base = ["--model", model_dir, "--input", image_folder["local"], "--out", out, "--date", DATE,
            "--run-id", "mid", "--set", "score.max_failure_fraction=0.5", "--set", "image.max_pixels=20000000"]
    seen: list = []
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(scores_table.table_uri(out), "mid", seen, stop), daemon=True)
    reader.start()
    try:
        killed = subprocess.run([sys.executable, "-m", "skinray", "score", *base, "--set", f"score.fail_at={fail_at}"],
                                cwd=REPO, capture_output=True, text=True, timeout=420)
        assert killed.returncode == 137, killed.stderr[-2000:]
        data_files = [f for f in storage.list_files(scores_table.table_uri(out), suffixes=[".parquet"])
                      if "/part-mid-" in f]
        assert data_files, "the data files were written before the kill"
        assert records.read(out, "mid").status == "running"
        summary = score(_cfg(model_dir, image_folder["local"], out, **{"score.run_id": "mid"}))
        time.sleep(0.5)
    finally:
        stop.set()
        reader.join(timeout=30)
    n = image_folder["n"]
    assert summary.status == "succeeded" and records.read(out, "mid").status == "succeeded"
    assert seen and set(seen) <= {0, n}, sorted(set(seen))  # never part of the run, never twice
    assert seen[-1] == n and len(_rows(out)) == n
    versions = scores_table.snapshot(out).runs
    assert versions["run_id"].tolist() == ["mid"]  # one commit, even when the first attempt had committed


def test_user_errors_of_score_are_one_line(image_folder, model_dir, tmp_path):
    from conftest import run_cli

    for extra, message in [(["--date", "20260202"], "YYYY-MM-DD"), (["--run-id", "../../../escaped_run"],
                                                                      "score.run_id"),
                           (["--date", "2026-W05-1"], "YYYY-MM-DD")]:
        proc = run_cli("score", "--model", model_dir, "--input", image_folder["local"], "--out",
                       str(tmp_path / "o"), *extra)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "escaped_run").exists() and not (tmp_path / "o").exists()
    for attempt in range(3):  # an empty manifest once aborted the process (rc 134) one time in three
        (tmp_path / "empty.csv").write_bytes(b"")
        proc = run_cli("score", "--model", model_dir, "--input", str(tmp_path / "empty.csv"), "--out",
                       str(tmp_path / "o2"))
        assert proc.returncode == 2 and "cannot be parsed" in proc.stderr and "Traceback" not in proc.stderr


def _night_folder(image_folder, where: str, tmp_path, n: int) -> tuple[str, callable]:
    """A fresh folder of the first ``n`` good images, and a function that adds more (late arrivals) to it."""
    local = tmp_path / "night"
    local.mkdir()
    target = str(local) if where == "local" else f"s3://{BUCKET}/night-{os.urandom(4).hex()}"

    def add(names: list[str]) -> None:
        for name in names:
            src = os.path.join(image_folder["local"], name)
            if where == "local":
                shutil.copy(src, local / name)
            else:
                storage.write_bytes(f"{target}/{name}", open(src, "rb").read())

    add(image_folder["good"][:n])
    return target, add


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_night_is_scored_once_however_often_it_is_submitted(where, image_folder, model_dir, ray_session, tmp_path):
    night, add = _night_folder(image_folder, where, tmp_path, 10)
    out = str(tmp_path / "out") if where == "local" else f"s3://{BUCKET}/night-out-{os.urandom(4).hex()}"
    cfg = _cfg(model_dir, night, out)
    first = score(cfg)
    assert first.scored == 10 and first.table_version == 1
    before = _rows(out).set_index("image_uri")["scored_at"]
    add(image_folder["good"][10:16])  # six images arrive after the 02:00 run
    second = score(cfg)  # the scheduler's retry: the same command
    assert second.run_id == first.run_id and second.scored_this_attempt == 6
    rows = _rows(out)
    assert len(rows) == 16 and rows["image_uri"].is_unique and set(rows["run_id"]) == {first.run_id}
    assert rows.set_index("image_uri")["scored_at"].reindex(before.index).equals(before)  # not scored again
    assert [s["submission"] for s in second.submissions] == [1, 2]
    assert [s["new"] for s in second.submissions] == [10, 6] and second.rows == 16
    assert records.read(out, first.run_id).submissions[-1]["table_version"] == 2
    version = scores_table.snapshot(out).version
    idle = score(cfg)  # nothing new: no commit, exit 0
    assert idle.already_complete and scores_table.snapshot(out).version == version
    # the page shows the whole night, its commits listed
    page = storage.read_text(storage.join(runs.run_dir(out, first.run_id), "report.html"))
    assert "submission 2" in page
    if where == "local":  # new bytes at the same path are a new answer, replacing the old one
        name = image_folder["good"][0]
        shutil.copy(os.path.join(image_folder["local"], image_folder["good"][20]), os.path.join(night, name))
        os.utime(os.path.join(night, name), ns=(time.time_ns(), time.time_ns() + 10**9))
        third = score(cfg)
        assert third.scored_this_attempt == 1 and len(_rows(out)) == 16
        assert third.submissions[-1]["new"] == 1


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_rescore_with_another_model_replaces_the_night_for_every_reader(where, image_folder, model_dir,
                                                                          promising_model, ray_session, tmp_path):
    night, _ = _night_folder(image_folder, where, tmp_path, 12)
    out = str(tmp_path / "out") if where == "local" else f"s3://{BUCKET}/rescore-out-{os.urandom(4).hex()}"
    first = score(_cfg(model_dir, night, out))
    second = score(_cfg(promising_model, night, out))  # another model: another run of the same night
    assert second.run_id != first.run_id and second.scored_this_attempt == 12
    uri = scores_table.table_uri(out)
    options = storage.delta_storage_options(uri)
    table = DeltaTable(uri, storage_options=options)
    con = duckdb.connect()  # DuckDB and pandas, outside skinray's query code
    con.register("s", table.to_pyarrow_dataset())
    assert con.execute("SELECT count(*), count(DISTINCT image_uri) FROM s").fetchone() == (12, 12)
    assert con.execute("SELECT DISTINCT model_id FROM s").fetchall() == [(ModelArtifact.open(promising_model)
                                                                          .model_id,)]
    frame = table.to_pandas()
    assert len(frame) == 12 and set(frame["run_id"]) == {second.run_id}
    old = DeltaTable(uri, version=first.table_version, storage_options=options).to_pandas()  # time travel
    assert len(old) == 12 and set(old["run_id"]) == {first.run_id}
    assert set(_rows(out, as_of=first.table_version)["run_id"]) == {first.run_id}


def test_reads_failing_for_a_while_are_retried_and_reads_failing_throughout_wait_for_the_next_submit(
        image_folder, model_dir, ray_session, tmp_path, s3_endpoint):
    from conftest import FlakyS3

    night, _ = _night_folder(image_folder, "s3", tmp_path, 12)
    out = f"s3://{BUCKET}/flaky-out-{os.urandom(4).hex()}"
    names = set(image_folder["good"][:3])
    fast = {"storage.retry_base_seconds": 0.05}
    with FlakyS3(s3_endpoint, names, times=4) as proxy:  # more than the S3 client's own three tries
        run = score(_cfg(model_dir, night, out, **{"storage.endpoint_url": proxy.url, **fast}))
        assert proxy.failures >= 12
    assert run.status == "succeeded" and run.scored == 12 and run.failed == 0
    out2 = f"s3://{BUCKET}/flaky-out-{os.urandom(4).hex()}"
    with FlakyS3(s3_endpoint, names, times=None) as proxy:  # unreachable the whole night
        args = ["score", "--model", model_dir, "--input", night, "--out", out2, "--date", DATE, "--endpoint-url",
                proxy.url, "--log-format", "json", "--set", "storage.read_attempts=2", "--set",
                "storage.retry_base_seconds=0.05"]
        from conftest import run_cli

        proc = run_cli(*args)
    assert proc.returncode == 75, proc.stderr[-2000:]
    error = json.loads(proc.stderr.strip().splitlines()[-1])
    assert error["kind"] == "temporary" and error["level"] == "error" and error["run_id"] and error["time"]
    rows = _rows(out2)
    assert len(rows) == 9 and not rows["image_uri"].str.split("/").str[-1].isin(names).any()  # not committed
    record = records.read(out2, error["run_id"])
    assert record.status == "incomplete" and record.retry_later == 3
    again = run_cli(*[a for a in args if a not in ("--endpoint-url", proxy.url)])  # the bucket is back
    assert again.returncode == 0, again.stderr[-2000:]
    rows = _rows(out2)
    assert len(rows) == 12 and rows["image_uri"].is_unique and rows["error"].isna().all()
    assert records.read(out2, error["run_id"]).status == "succeeded"


def test_exit_codes_tell_a_scheduler_what_to_do(image_folder, model_dir, tmp_path):
    from conftest import run_cli

    out = str(tmp_path / "out")
    base = ["score", "--model", model_dir, "--input", image_folder["local"], "--out", out, "--date", DATE,
            "--log-format", "json", "--set", "image.max_pixels=20000000"]
    failed = run_cli(*base, "--set", "score.max_failure_fraction=0.01")  # 8 of 48 images are bad: the data says no
    assert failed.returncode == 3, failed.stderr[-2000:]
    error = json.loads(failed.stderr.strip().splitlines()[-1])
    assert error["kind"] == "data" and error["stage"] == "score" and error["run_id"].startswith(DATE)
    assert run_cli(*base, "--set", "score.max_failure_fraction=0.01").returncode == 3  # stays failed
    typo = run_cli(*base, "--batch-sise", "4")  # argparse's own error, as JSON too
    assert typo.returncode == 2
    error = json.loads(typo.stderr.strip().splitlines()[-1])
    assert error["kind"] == "usage" and "batch-sise" in error["message"] and error["time"]
    elsewhere = [a if a != out else str(tmp_path / "other") for a in base]
    down = run_cli(*elsewhere, env={"RAY_ADDRESS": "127.0.0.1:9"})  # no cluster there: retry later
    assert down.returncode == 75, down.stderr[-2000:]
    assert json.loads(down.stderr.strip().splitlines()[-1])["kind"] == "temporary"
