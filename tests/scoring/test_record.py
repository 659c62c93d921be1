"""run.json's one owner (skinray.scoring.record): a typed record built once and extended step by step, every key it
held before the schema kept, records written before the schema still read, the status decided in one place, and
the image root kept for every input kind (tests/scoring/test_run.py checks the same on real runs)."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from skinray import DataError, SkinrayError
from skinray.scoring import record as records
from skinray.scoring.record import FORMAT_VERSION, LEGACY_VERSION, RunRecord

from conftest import FAILED_RUN_JSON_KEYS_V0, RUN_JSON_ADDED, RUN_JSON_KEYS_V0

CLAIM = {"run_id": "2026-11-25-abc", "scored_date": "2026-11-25", "input": "/data/night", "input_kind": "images",
         "image_root": "/data/night", "input_fingerprint": "f" * 16, "skipped_inputs": {"hidden": 1},
         "nulled_values": {}, "model": "/models/m", "model_id": "0123456789abcdef", "engine": "onnx", "tta": True,
         "tta_band": 0.8, "threshold": 0.42, "threshold_policy": {"policy": "youden", "threshold": 0.42},
         "calibration": {"temperature": 1.1, "bias": 0.0}, "diagnoses": ["mel", "nv"], "table": "/out/scores",
         "config": {"score": {"batch_size": 4}}, "versions": {"python": "3.11"}}
THROUGHPUT = {"actors": 2, "rows_by_node": {"node-a": 4}, "batch_modes": {"batch": 4}, "views": {"0": 1, "1": 3},
              "startup_seconds": 1.5, "images_per_second_steady": 80.0, "actors_ready_seconds": [1.0, 1.1],
              "images_per_second_overall": 10.0}
# a run.json as scoring wrote it before the record had a schema (no format_version); the config trimmed
LEGACY = {
    "run_id": "2026-11-25-29b133242c", "scored_date": "2026-11-25", "status": "succeeded",
    "input": "/tmp/base/sample/images", "input_kind": "images", "input_fingerprint": "b8c47d208cf536c6",
    "skipped_inputs": {}, "nulled_values": {}, "model": "/tmp/base/model", "model_id": "be93fa4f6d99a50a",
    "engine": "onnx", "tta": True, "tta_band": 1.001490131020546e-05, "threshold": 0.501578695696335,
    "threshold_policy": {"policy": "youden", "threshold": 0.501578695696335},
    "calibration": {"method": "platt", "temperature": 19.99999493272578, "bias": 0.0},
    "diagnoses": ["akiec", "bcc", "bkl", "df", "mel", "nv"], "started_at": "2026-12-08T04:28:41+00:00",
    "table": "/tmp/out/scores", "config": {"score": {"batch_size": 4}},
    "versions": {"python": "3.11.9", "skinray": "0.1.0"}, "scored_this_attempt": 93, "resumed_rows": 0,
    "quarantined_parts": [], "actors": 2, "rows_by_node": {"ce50660dd5fd42acb43d66c31788bc14d183f4fa90a40c3f1b": 93},
    "batch_modes": {"batch": 77, "probing": 16}, "views": {"0": 4, "3": 89}, "startup_seconds": 15.9,
    "images_per_second_steady": 25.1, "actors_ready_seconds": [14.43, 15.21], "images_per_second_overall": 4.8,
    "rows": 93, "scored": 89, "failed": 4, "failed_by_reason": {"not_image": 3, "empty": 1}, "retry_later": 0,
    "out_of_distribution": {"guard": True, "flagged": 2, "scored": 89, "share": 0.0225, "expected_share": 0.125,
                            "threshold": 53.58402786254883, "high": False},
    "flagged": 74, "mean_prob": 0.501579,
    "drift": {"reference": True, "drifted": True, "flagged": ["mean_red"], "columns": [],
              "thresholds": {"psi": 0.25, "ks_alpha": 0.001, "ks_min_statistic": 0.15, "min_rows": 30}},
    "commit_seconds": 0.043, "submissions": [{"submission": 1, "table_version": 1, "committed_at":
                                              "2026-12-08T04:29:01.519Z", "new": 93, "retry_later": 0,
                                              "started_at": "2026-12-08T04:28:41+00:00"}],
    "table_version": 1, "finished_at": "2026-12-08T04:29:01+00:00", "wall_seconds": 20.84,
    "pngs": ["score_histogram.png", "top_suspicious.png"], "metrics": None, "worklist": "worklist.csv",
    "saliency_seconds_per_image": 0.0376}


def _scored(errors: list[str | None], max_failure_fraction: float = 0.5, retry_later: int = 0) -> RunRecord:
    run = RunRecord.submitted(**CLAIM).planned(scored_this_attempt=len(errors), resumed_rows=0, quarantined_parts=[])
    run = run.throughput(**THROUGHPUT).outcome(pd.DataFrame({"error": errors}), retry_later, max_failure_fraction)
    return run.with_figures({"guard": False}, flagged=1, mean_prob=0.4, drift={"reference": False, "drifted": False})


def _write_json(out, data: dict) -> None:
    folder = os.path.join(out, "runs", data["run_id"])
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, records.RUN_FILE), "w") as f:
        json.dump(data, f)


def test_a_succeeded_night_records_every_key_it_did_before_the_schema_and_its_version(tmp_path):
    run = _scored([None, None, None, "missing: gone"])
    info = run.commit_info(new=4)
    run = run.committed_in(0.05).finished([{"submission": 1, "table_version": 3, "new": 4}], wall_seconds=2.0)
    run = run.reported(pngs=["score_histogram.png"], metrics=None, worklist="worklist.csv").explained(0.01)
    assert set(run.dump()) == RUN_JSON_KEYS_V0 | RUN_JSON_ADDED
    assert run.dump()["format_version"] == FORMAT_VERSION and run.status == "succeeded" and run.committed
    assert (run.rows, run.scored, run.failed, run.failed_by_reason) == (4, 3, 1, {"missing": 1})
    assert run.table_version == 3 and run.finished_at and run.started_at
    # what the commit carries in the table's history: the outcome, before the submission ended
    assert info["status"] == "succeeded" and info["new"] == 4 and info["drifted"] is False
    assert info["flagged"] == 1 and info["out_of_distribution"] is None and info["retry_later"] == 0
    records.write(str(tmp_path), run)
    assert records.read(str(tmp_path), run.run_id).dump() == run.dump()
    assert records.read(str(tmp_path), "another") is None


def test_a_failed_night_records_its_reason_and_what_it_did_before():
    run = _scored(["missing: a", "missing: b", None, None], max_failure_fraction=0.25)
    assert run.stays_failed and not run.committed and not run.answers_all(pending=0)
    assert run.failure_reason.startswith("2 of 4 images could not be scored (50.0% > score.max_failure_fraction")
    run = run.stopped().reported(pngs=[], metrics=None, worklist="worklist.csv").explained(None)
    assert set(run.dump()) == FAILED_RUN_JSON_KEYS_V0 | RUN_JSON_ADDED


def test_the_status_is_decided_by_the_record():
    running = RunRecord.submitted(**CLAIM)
    assert running.status == "running" and not running.committed and not running.answers_all(pending=0)
    assert set(running.dump()) == set(CLAIM) | {"format_version", "status", "started_at"}  # only what it knows
    waiting = _scored([None] * 4, retry_later=2)
    assert waiting.commit_info(new=2)["status"] == "succeeded"  # the rows it commits are answers
    done = waiting.finished([{"submission": 1, "table_version": 0}], wall_seconds=1.0)
    assert done.status == "incomplete" and done.committed and done.retry_later == 2
    assert done.answers_all(pending=0) and not done.answers_all(pending=2)
    with pytest.raises(Exception):  # the record is frozen: extended by its steps only
        done.status = "succeeded"


def test_a_run_json_written_before_the_schema_still_reads_and_claims(tmp_path):
    out = str(tmp_path)
    _write_json(out, {**LEGACY, "obsolete_key": 1})  # a key a later version dropped is left out
    old = records.read(out, LEGACY["run_id"])
    assert old.format_version == LEGACY_VERSION and old.status == "succeeded" and old.committed
    assert {k: v for k, v in old.dump().items() if k != "format_version"} == LEGACY  # every value as written
    assert old.flagged == 74 and old.submissions[0]["new"] == 93 and old.drift["drifted"] is True
    # the image root was recorded only from format 1: an old folder run's root is its input, as before
    assert old.image_root is None and old.root == LEGACY["input"]
    assert records.claim(out, LEGACY["run_id"], "2026-11-25", LEGACY["input"], LEGACY["model_id"]).run_id == \
        LEGACY["run_id"]
    with pytest.raises(SkinrayError, match="was used for 2026-11-25, not 2026-11-26"):
        records.claim(out, LEGACY["run_id"], "2026-11-26", LEGACY["input"], LEGACY["model_id"])
    with pytest.raises(SkinrayError, match="other input or another model"):
        records.claim(out, LEGACY["run_id"], "2026-11-25", LEGACY["input"], "ffffffffffffffff")
    _write_json(out, {**LEGACY, "status": "failed", "failure_reason": "9 of 10 images could not be scored"})
    with pytest.raises(DataError, match="failed: 9 of 10 images could not be scored .*stays failed"):
        records.claim(out, LEGACY["run_id"], "2026-11-25", LEGACY["input"], LEGACY["model_id"])
    _write_json(out, {**LEGACY, "input_kind": "manifest"})
    assert records.read(out, LEGACY["run_id"]).root is None  # as before: no root known for an old manifest run


def test_a_record_of_a_newer_format_or_another_shape_is_refused_in_one_line(tmp_path):
    out = str(tmp_path)
    _write_json(out, {**LEGACY, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(SkinrayError, match=f"run record format {FORMAT_VERSION + 1} is not one this skinray reads"):
        records.read(out, LEGACY["run_id"])
    _write_json(out, {**LEGACY, "format_version": FORMAT_VERSION, "status": "done"})
    with pytest.raises(SkinrayError, match=r"not a valid run record \(status: "):
        records.read(out, LEGACY["run_id"])
    _write_json(out, {**LEGACY, "format_version": FORMAT_VERSION, "surprise": 1})
    with pytest.raises(SkinrayError, match=r"not a valid run record \(surprise: "):
        records.read(out, LEGACY["run_id"])
    with open(os.path.join(out, "runs", LEGACY["run_id"], records.RUN_FILE), "w") as f:
        f.write("{not json")
    with pytest.raises(SkinrayError, match="is not valid JSON"):
        records.read(out, LEGACY["run_id"])


def test_images_are_read_again_under_the_root_scoring_used_for_every_input_kind():
    uris = ["/imgs/clinic-a/x.jpg", "/elsewhere/y.jpg", "/imgs-old/z.jpg", "s3://bucket/imgs/w.jpg"]
    rows = pd.DataFrame({"image_uri": uris})
    manifest = RunRecord.submitted(**{**CLAIM, "input": "/m.csv", "input_kind": "manifest", "image_root": "/imgs"})
    # under the root: guarded; a manifest's absolute URI elsewhere was read without one, and still is
    assert manifest.with_roots(rows)["image_root"].tolist() == ["/imgs", None, None, None]
    bare = RunRecord.submitted(**{**CLAIM, "input": "/m.csv", "input_kind": "manifest", "image_root": None})
    assert bare.with_roots(rows)["image_root"].tolist() == [None] * 4
    folder = RunRecord.submitted(**{**CLAIM, "input": "/imgs", "image_root": "/imgs"})
    assert folder.with_roots(rows)["image_root"].tolist()[0] == "/imgs"


def test_a_failed_nights_rows_are_written_and_read_by_the_record(tmp_path):
    out = str(tmp_path)
    rows = pd.DataFrame({"input_row": [0, 1], "isic_id": ["a", "b"], "image_uri": ["/i/a.jpg", "/i/b.jpg"],
                         "image_key": ["/i/a.jpg", "/i/b.jpg"], "error": [None, "missing: b"],
                         "prob_malignant": [0.3, None]})
    failed = _scored(["missing: a", "missing: b"], max_failure_fraction=0.1).stopped()
    assert records.read_rows(out, failed.run_id) is None
    with pytest.raises(SkinrayError, match="is failed: no rows to show yet"):
        records.night_rows(out, failed)
    where = records.write_rows(out, failed.run_id, rows)
    assert where == records.rows_uri(out, failed.run_id) and where.endswith("/rows.parquet")
    back = records.night_rows(out, failed)
    assert back["isic_id"].tolist() == ["a", "b"] and back["error"].tolist()[1] == "missing: b"
    with pytest.raises(SkinrayError, match="is running: no rows to show yet"):
        records.night_rows(out, RunRecord.submitted(**{**CLAIM, "run_id": "other"}))
