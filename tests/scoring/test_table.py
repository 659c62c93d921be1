"""The scores table (Delta Lake) without Ray: one commit per submission, one answer per image and night, exactly
once, what readers see, the SQL sandbox.

Runs against a local folder and the S3 endpoint (moto), which honours the conditional writes Delta's commits use.
"""

import os
import re

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from skinray import SkinrayError
from skinray.io import storage
from skinray.query import preset_sql, run_query, scores_dataset
from skinray.scoring import row_schema, table as scores_table

from conftest import BUCKET, score_rows as _rows


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path, s3_endpoint):
    if request.param == "local":
        return str(tmp_path / "out")
    return f"s3://{BUCKET}/table-test-{os.urandom(4).hex()}"


def _count(out: str, run_id: str, **kw) -> int:
    return int(run_query(out, f"SELECT count(*) AS n FROM scores WHERE run_id = '{run_id}'", **kw)["n"][0])


def test_a_run_is_one_commit_and_a_second_commit_of_it_adds_nothing(out):
    v1 = scores_table.commit_run(out, "r1", "2026-11-25", _rows("r1"), {"status": "succeeded", "rows": 5})
    assert scores_table.commit_run(out, "r1", "2026-11-25", _rows("r1"), {"status": "succeeded"}) == v1
    snap = scores_table.snapshot(out)
    assert snap.version == v1 == 1 and _count(out, "r1") == 5
    runs = snap.runs.set_index("run_id")
    assert runs.loc["r1", "status"] == "succeeded" and runs.loc["r1", "rows"] == "5"
    table = snap.dataset.to_table()
    assert table.schema.field("scored_date").type == pa.date32()  # a real DATE, not a string
    assert table.schema.field("dx_probs").type == pa.map_(pa.string(), pa.float64())


def test_a_concurrent_commit_of_the_same_run_fails_with_one_line_and_adds_nothing(out, monkeypatch):
    scores_table.commit_run(out, "r0", "2026-11-24", _rows("r0"), {"status": "succeeded"})
    stale = scores_table._load(scores_table.table_uri(out), None)  # another process's view, before r1
    scores_table.commit_run(out, "r1", "2026-11-25", _rows("r1"), {"status": "succeeded"})
    monkeypatch.setattr(scores_table, "_open_or_create", lambda uri, st: stale)
    with pytest.raises(SkinrayError, match="committed by another process at the same time"):
        scores_table.commit_run(out, "r1", "2026-11-25", _rows("r1"), {"status": "succeeded"})
    monkeypatch.undo()
    assert _count(out, "r1") == 5
    # two different runs committed from the same old snapshot both land: appends do not conflict
    stale = scores_table._load(scores_table.table_uri(out), None)
    monkeypatch.setattr(scores_table, "_open_or_create", lambda uri, st: stale)
    scores_table.commit_run(out, "r2", "2026-11-25", _rows("r2"), {"status": "succeeded"})
    stale2 = scores_table._load(scores_table.table_uri(out), None, version=stale.version())
    monkeypatch.setattr(scores_table, "_open_or_create", lambda uri, st: stale2)
    scores_table.commit_run(out, "r3", "2026-11-26", _rows("r3"), {"status": "succeeded"})
    monkeypatch.undo()
    assert set(scores_table.snapshot(out).runs["run_id"]) == {"r0", "r1", "r2", "r3"}


def test_each_image_counts_once_per_date_and_earlier_versions_stay_readable(out):
    scores_table.commit_run(out, "night1", "2026-11-25", _rows("night1"), {})
    scores_table.commit_run(out, "other-day", "2026-11-26", _rows("other-day"), {})
    scores_table.commit_run(out, "rescore", "2026-11-25", _rows("rescore", seed=1), {})
    daily = run_query(out, preset_sql("daily_counts")).set_index("scored_date")
    assert daily["images"].tolist() == [5, 5]  # the re-score replaced the first run of 11-25
    assert run_query(out, "SELECT count(*) AS n FROM scores")["n"][0] == 10
    assert _count(out, "night1") == 0 and _count(out, "rescore") == 5
    # the audit trail: what was reported for 11-25 before the re-score
    before = run_query(out, preset_sql("daily_counts"), as_of=2).set_index("scored_date")
    assert before["images"].tolist() == [5, 5] and _count(out, "night1", as_of=2) == 5
    assert scores_dataset(out, as_of="1").to_table().num_rows == 5
    runs = run_query(out, "SELECT run_id, submission, replaced_files FROM runs ORDER BY version")
    assert runs.values.tolist() == [["night1", 1, "0"], ["other-day", 1, "0"], ["rescore", 1, "1"]]
    with pytest.raises(SkinrayError, match="--as-of"):
        scores_dataset(out, as_of="last tuesday")


def test_a_partial_rescore_replaces_only_its_images_and_late_ones_are_added(out):
    scores_table.commit_run(out, "night", "2026-11-25", _rows("night", n=6), {})
    part = _rows("fix", n=6).slice(1, 2)  # two of the six images scored again (another model)
    scores_table.commit_run(out, "fix", "2026-11-25", part, {})
    late = _rows("night", n=9).slice(6, 3)  # three images arrived later: the same run's second submission
    scores_table.commit_run(out, "night", "2026-11-25", late, {}, submission=2)
    scores_table.commit_run(out, "night", "2026-11-25", late, {}, submission=2)  # a repeated submit adds nothing
    uri = scores_table.table_uri(out)
    table = DeltaTable(uri, storage_options=storage.delta_storage_options(uri)).to_pandas()  # pandas, not skinray
    assert len(table) == 9 and table["image_key"].is_unique
    assert table.groupby("run_id").size().to_dict() == {"fix": 2, "night": 7}
    assert scores_table.submissions(out, "night") == 2
    assert [s["submission"] for s in scores_table.run_submissions(out, "night")] == [1, 2]
    answered = scores_table.answered(out, "night", "2026-11-25")
    assert len(answered) == 7 and set(answered["image_stamp"]) == {"1:1"}


def test_a_table_of_another_schema_is_refused(out):
    from deltalake import write_deltalake

    uri = scores_table.table_uri(out)
    options = storage.delta_storage_options(uri)
    write_deltalake(uri, pa.table({"a": [1], "scored_date": ["2026-11-25"]}), partition_by=["scored_date"],
                    storage_options=options)
    with pytest.raises(SkinrayError, match="another schema"):
        scores_table.commit_run(out, "r1", "2026-11-25", _rows("r1"), {})
    assert DeltaTable(uri, storage_options=options).version() == 0  # nothing written into it


def test_a_time_before_the_table_existed_has_no_version(out, capsys):
    from skinray.cli import main

    scores_table.commit_run(out, "night1", "2026-11-25", _rows("night1"), {})
    first = scores_table.snapshot(out).runs["committed_at"].iloc[0]
    for before in ("2000-01-01", (first - pd.Timedelta(seconds=5)).isoformat()):
        message = re.escape(f"has no version as of {before}: the table's first version is from")
        with pytest.raises(SkinrayError, match=message):
            scores_table.snapshot(out, as_of=before)
        assert main(["query", out, "--daily-counts", "--as-of", before]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has no version as of" in err[0], err
    later = (first + pd.Timedelta(seconds=1)).isoformat()
    assert scores_table.snapshot(out, as_of=later).dataset.to_table().num_rows == 5


def test_top_of_the_ranking_has_no_ties_from_saturated_outputs(out):
    rows = _rows("r", n=6).to_pandas()
    rows["logit_malignant"] = [40.0, 35.0, 30.0, 25.0, 20.0, None]
    rows["prob_malignant"] = 1 / (1 + np.exp(-rows["logit_malignant"]))
    scores_table.commit_run(out, "r", "2026-11-25", row_schema.to_rows(rows.assign(scored_at=pd.Timestamp.now(
        tz="UTC"), dx_probs=None)), {})
    top = run_query(out, preset_sql("top_suspicious", 5, "2026-11-25"))
    assert top["isic_id"].tolist() == [f"ISIC_{i}" for i in range(5)]  # ordered by logit, not the rounded prob


def test_external_readers_see_committed_runs_only(out):
    scores_table.commit_run(out, "r1", "2026-11-25", _rows("r1"), {})
    uri = scores_table.table_uri(out)
    # a foreign Parquet file dropped into the table folder is not part of the table
    foreign = pa.table({"isic_id": ["x"] * 24, "prob_malignant": [0.9] * 24})
    storage.write_parquet(foreign, storage.join(uri, "scored_date=2026-11-25", "dropped.parquet"))
    dt = DeltaTable(uri, storage_options=storage.delta_storage_options(uri))
    ds = dt.to_pyarrow_dataset()  # what DuckDB, Polars or pandas users do, outside skinray
    con = duckdb.connect()
    con.register("s", ds)
    assert con.execute("SELECT count(*) FROM s").fetchone()[0] == 5 and ds.to_table().num_rows == 5


def test_s3_output_has_no_marker_objects(s3_endpoint):
    out = f"s3://{BUCKET}/markers-{os.urandom(4).hex()}"
    scores_table.commit_run(out, "r1", "2026-11-25", _rows("r1"), {})
    prefix = out[len(f"s3://{BUCKET}/"):]
    objects = storage.boto3_client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    assert objects and all(o["Size"] > 0 and not o["Key"].endswith("/") for o in objects)


def test_sql_is_sandboxed(tmp_path):
    out = str(tmp_path / "out")
    scores_table.commit_run(out, "r1", "2026-11-25", _rows("r1"), {})
    secret = tmp_path / "secret.txt"
    secret.write_text("AWS_SECRET_ACCESS_KEY=hunter2")
    for sql in (f"SELECT * FROM read_text('{secret}')", "SELECT * FROM read_text('/proc/self/environ')",
                "SELECT * FROM read_csv('/etc/passwd')", f"COPY (SELECT 1) TO '{tmp_path}/x.csv'",
                "INSTALL httpfs", "SET enable_external_access = true", f"ATTACH '{tmp_path}/x.db'"):
        with pytest.raises(SkinrayError, match="query failed"):
            run_query(out, sql)
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()
    assert _count(out, "r1") == 5  # and the views still work


def test_reading_before_any_run_is_one_clear_error(tmp_path):
    with pytest.raises(SkinrayError, match="no scores table"):
        run_query(str(tmp_path), "SELECT 1")


def test_staged_parts_keep_the_first_score_of_each_row(tmp_path):
    from skinray.scoring import staging

    writer = staging.PartWriter(str(tmp_path), "r")
    writer.write(_rows("r", 5))
    second = staging.PartWriter(str(tmp_path), "r")  # a concurrent attempt staged the same rows again
    second.write(_rows("r", 5, seed=9))
    part = next(p for p in os.listdir(tmp_path / "_staging" / "r") if p.startswith(f"part-{second.attempt}"))
    staged = staging.load(str(tmp_path), "r")
    assert staged.rows.num_rows == 5 and set(staged.frame()["image_key"]) == {f"/in/{i}.jpg" for i in range(5)}
    # a damaged part is moved aside and its rows are scored again, instead of stopping the run
    (tmp_path / "_staging" / "r" / part).write_bytes(b"PAR1 not really")
    first = next(p for p in os.listdir(tmp_path / "_staging" / "r") if p.startswith(f"part-{writer.attempt}"))
    (tmp_path / "_staging" / "r" / first).write_bytes(b"garbage")
    staged = staging.load(str(tmp_path), "r")
    assert staged.rows is None and len(staged.quarantined) == 2
    assert sorted(os.listdir(tmp_path / "_staging" / "r")) == sorted(p.replace(".parquet", ".corrupt")
                                                                     for p in (part, first))


def test_scoring_inputs_know_each_images_identity_within_the_night(tmp_path):
    from skinray.config import ManifestConfig
    from skinray.io.storage import StorageConfig
    from skinray.scoring.inputs import load

    (tmp_path / "img").mkdir()
    for name in ("a", "b"):
        (tmp_path / "img" / f"{name}.jpg").write_bytes(name.encode())
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"isic_id": ["a", "b", "a", "gone"]}).to_csv(manifest, index=False)
    rows = load(str(manifest), "auto", str(tmp_path / "img"), ManifestConfig(), StorageConfig()).rows
    assert rows["image_key"].is_unique and rows["image_key"].notna().all()  # a repeated image keeps its own row
    assert rows["image_key"][0] == rows["image_uri"][0] and rows["image_key"][2] == rows["image_uri"][0] + "#1"
    assert rows["image_stamp"][0].startswith("1:") and rows["image_stamp"][3] == ""
    folder = load(str(tmp_path / "img"), "auto", None, ManifestConfig(), StorageConfig()).rows
    assert (folder["image_key"] == folder["image_uri"]).all() and folder["image_stamp"].str.startswith("1:").all()
