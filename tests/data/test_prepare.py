"""prepare: every input row ends up kept or rejected with its reason, locally and through S3."""

import json

import pandas as pd
import pytest

from skinray.config import load_config
from skinray.data.prepare import load_prepared, prepare
from skinray.io import storage

from conftest import BUCKET, run_cli, second_source


def _prepare(manifest: str, images: str, out: str, **extra):
    cfg = load_config(overrides={"prepare.manifest": manifest, "prepare.images": images, "prepare.out": out,
                                 **extra})
    return prepare(cfg)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_planted_faults_are_rejected_by_reason(where, sample, ray_session, tmp_path):
    root = sample[where]
    out = str(tmp_path / "prepared") if where == "local" else f"s3://{BUCKET}/prepared-test"
    report = _prepare(f"{root}/metadata.csv", f"{root}/images", out)
    s = sample["summary"]
    rejects = storage.read_parquet(storage.join(out, "rejects.parquet")).to_pandas()
    kept = load_prepared(out)
    assert report.rows_in == s["n"] == len(kept) + len(rejects)
    assert set(rejects.loc[rejects.reason == "missing", "isic_id"]) == set(s["missing_ids"])
    assert set(rejects.loc[rejects.reason != "missing", "isic_id"]) == set(s["corrupt_ids"])
    assert sum(report.rejected_by_reason.values()) == s["corrupt"] + s["missing"]
    assert report.lesions_in_two_splits == 0
    assert kept["age_approx"].notna().all() and kept["anatom_site_general"].notna().all()
    assert set(kept.columns) >= {"isic_id", "image_uri", "label", "benign_malignant", "split", "lesion_id"}
    saved = storage.read_text(storage.join(out, "config.yaml"))
    assert "manifest:" in saved and json.dumps(report.splits)  # config saved next to the output


def test_manifest_level_rejects_and_imputation(tmp_path, sample, ray_session):
    images = f"{sample['local']}/images"
    good = sorted(set(pd.read_csv(f"{sample['local']}/metadata.csv")["isic_id"])
                  - set(sample["summary"]["missing_ids"]) - set(sample["summary"]["corrupt_ids"]))
    rows = [
        {"isic_id": good[0], "benign_malignant": "benign", "age_approx": 40, "anatom_site_general": ""},
        {"isic_id": good[1], "benign_malignant": "malignant", "age_approx": None, "anatom_site_general": "head/neck"},
        {"isic_id": good[0], "benign_malignant": "benign", "age_approx": 40, "anatom_site_general": ""},  # dup
        {"isic_id": "", "benign_malignant": "benign", "age_approx": 50, "anatom_site_general": ""},
        {"isic_id": "../../etc/passwd", "benign_malignant": "benign", "age_approx": 50, "anatom_site_general": ""},
        {"isic_id": good[2], "benign_malignant": "indeterminate", "age_approx": 50, "anatom_site_general": ""},
    ] + [{"isic_id": g, "benign_malignant": "malignant" if i % 3 == 0 else "benign", "age_approx": 60,
          "anatom_site_general": "back"} for i, g in enumerate(good[3:30])]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    report = _prepare(str(manifest), images, str(tmp_path / "out"))
    assert report.rejected_by_reason == {"duplicate_id": 1, "empty_id": 1, "unsafe_id": 1, "unknown_label": 1}
    assert report.kept + report.rejected == len(rows)
    kept = load_prepared(str(tmp_path / "out"))
    assert kept.loc[kept.isic_id == good[0], "anatom_site_general"].item() == "unknown"
    train_median = report.record["imputed"]["age_approx"]["value"]
    assert kept.loc[kept.isic_id == good[1], "age_approx"].item() == pytest.approx(train_median)


def test_ages_that_are_no_age_are_imputed_and_counted(tmp_path, sample, ray_session):
    good = sorted(set(pd.read_csv(f"{sample['local']}/metadata.csv")["isic_id"])
                  - set(sample["summary"]["missing_ids"]) - set(sample["summary"]["corrupt_ids"]))[:24]
    ages = ["1e300", "-5", "200", "inf"] + [str(40 + i) for i in range(len(good) - 4)]
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"isic_id": good, "benign_malignant": ["malignant" if i % 3 == 0 else "benign"
                                                        for i in range(len(good))], "age_approx": ages}).to_csv(
        manifest, index=False)
    report = _prepare(str(manifest), f"{sample['local']}/images", str(tmp_path / "out"))
    assert report.kept == len(good)
    imputed = report.record["imputed"]["age_approx"]
    assert imputed["impossible"] == 4 and imputed["rows"] == 4
    assert any("4 ages were no age in years" in w for w in report.record["warnings"])
    kept = load_prepared(str(tmp_path / "out")).set_index("isic_id")
    assert kept.loc[good[:4], "age_approx"].tolist() == [pytest.approx(imputed["value"])] * 4
    assert kept["age_approx"].between(0, 130).all()


def test_ham10000_schema_with_image_template(tmp_path, ray_session):
    from skinray.data.synth import generate

    s = generate(str(tmp_path / "ham"), 30, image_size=48, schema="ham10000", seed=1)
    report = _prepare(f"{tmp_path}/ham/metadata.csv", f"{tmp_path}/ham/images", str(tmp_path / "out"))
    assert report.schema == "ham10000" and report.kept == s["n"]
    assert report.record["lesion_grouped"]


def test_several_sources_keep_their_name_and_split_by_label_and_source(tmp_path, sample, ray_session):
    b = second_source(tmp_path)
    s = sample["summary"]
    out = str(tmp_path / "pooled")
    cfg = load_config(overrides={"prepare.out": out, "prepare.sources": [
        {"name": "clinic-a", "manifest": f"{sample['local']}/metadata.csv", "images": f"{sample['local']}/images"},
        {"name": "clinic-b", "manifest": str(tmp_path / "b" / "metadata.csv"),
         "images": str(tmp_path / "b" / "images")},
    ]})
    report = prepare(cfg)
    kept = load_prepared(out)
    rejects = storage.read_parquet(storage.join(out, "rejects.parquet")).to_pandas()
    assert report.rows_in == s["n"] + len(b) == len(kept) + len(rejects)  # every row of both, once
    assert report.schema == "ham10000+isic"
    assert set(kept["source"]) == {"clinic-a", "clinic-b"}
    assert (kept.loc[kept.isic_id.str.startswith("B"), "source"] == "clinic-b").all()
    assert report.sources["clinic-b"]["kept"] == len(b) and report.sources["clinic-a"]["rows_in"] == s["n"]
    assert report.sources["clinic-a"]["lesion_grouped"] and not report.sources["clinic-b"]["lesion_grouped"]
    assert any("clinic-b: no lesion ids" in w for w in report.record["warnings"])
    assert report.lesions_in_two_splits == 0 and (kept.groupby("lesion_id")["split"].nunique() == 1).all()
    # stratified by label and source: every (source, label) stratum reaches train and test near its share
    for (source, label), part in kept.groupby(["source", "label"]):
        shares = part["split"].value_counts(normalize=True)
        assert shares.get("train", 0) > 0.5 and shares.get("test", 0) > 0.08, (source, label, shares.to_dict())
    # ISIC diagnosis names are read as the HAM10000 codes: one lesion type is one class across sources
    assert "melanoma" not in set(kept["dx"].dropna()) and "mel" in set(kept.loc[kept.source == "clinic-a", "dx"])
    # a --source flag is NAME MANIFEST [IMAGES]; a single --manifest is named by its folder
    assert report.sources == json.loads(storage.read_text(f"{out}/report.json"))["sources"]
    one = _prepare(f"{sample['local']}/metadata.csv", f"{sample['local']}/images", str(tmp_path / "one"))
    assert list(one.sources) == [sample["local"].rstrip("/").rsplit("/", 1)[-1]]


def test_source_flags(sample):
    from skinray import SkinrayError
    from skinray.cli import _parser, build_config

    args = _parser().parse_args(["prepare", "--out", "o", "--source", "a", "m.csv", "imgs", "--source", "b",
                                 "s3://x/m.parquet"])
    cfg = build_config(args)
    assert [(s.name, s.manifest, s.images) for s in cfg.prepare.sources] == [("a", "m.csv", "imgs"),
                                                                            ("b", "s3://x/m.parquet", None)]
    with pytest.raises(SkinrayError, match="NAME MANIFEST"):
        build_config(_parser().parse_args(["prepare", "--out", "o", "--source", "a"]))
    with pytest.raises(SkinrayError, match="sources.0.name"):
        build_config(_parser().parse_args(["prepare", "--out", "o", "--source", "a/../b", "m.csv"]))


def test_template_columns_are_checked_like_ids(tmp_path, sample, ray_session):
    """A column the image template reads may not lead out of --images (``../`` or an absolute path)."""
    import shutil

    src = f"{sample['local']}/images"
    good = sorted(set(pd.read_csv(f"{sample['local']}/metadata.csv")["isic_id"])
                  - set(sample["summary"]["missing_ids"]) - set(sample["summary"]["corrupt_ids"]))[:24]
    images, outside = tmp_path / "images", tmp_path / "outside"
    (images / "batch1").mkdir(parents=True)
    outside.mkdir()
    for g in good:
        shutil.copy(f"{src}/{g}.jpg", images / "batch1" / f"{g}.jpg")
        shutil.copy(f"{src}/{g}.jpg", outside / f"{g}.jpg")  # readable, but outside the root
    folders = ["batch1"] * 20 + ["../outside", str(outside), "batch1/../../outside", ".."]
    rows = [{"isic_id": g, "benign_malignant": "malignant" if i % 3 == 0 else "benign", "folder": f}
            for i, (g, f) in enumerate(zip(good, folders))]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    report = _prepare(str(tmp_path / "m.csv"), str(images), str(tmp_path / "out"),
                      **{"manifest.image_template": "{images}/{folder}/{isic_id}.jpg"})
    assert report.kept == 20 and report.rejected_by_reason == {"unsafe_id": 4}
    rejects = storage.read_parquet(str(tmp_path / "out" / "rejects.parquet")).to_pandas()
    assert set(rejects["isic_id"]) == set(good[20:])


def test_the_stage_logs_one_structured_event(tmp_path, sample, ray_session):
    """``--log-format json`` pipelines get the counts as fields, not only as text."""
    import logging

    events = []

    class Collect(logging.Handler):
        def emit(self, record):
            events.append(getattr(record, "event", None))

    logger = logging.getLogger("skinray.prepare")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # on its own, not only after a test that set up the console
    try:
        report = _prepare(f"{sample['local']}/metadata.csv", f"{sample['local']}/images", str(tmp_path / "out"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    done = [e for e in events if e and "kept" in e]
    assert len(done) == 1 and done[0]["kept"] == report.kept and done[0]["rejected"] == report.rejected


@pytest.mark.parametrize("args, message, code", [
    (["--manifest", "/nope/m.csv", "--images", "/nope", "--out", "/tmp/x"], "manifest not found", 2),
    (["--manifest", "MANIFEST", "--images", "/nope", "--out", "/tmp/x", "--schema", "weird"], "invalid choice", 2),
    (["--manifest", "s3://no-such-bucket-skinray/m.csv", "--images", "s3://x", "--out", "/tmp/x",
      "--endpoint-url", "http://127.0.0.1:9"], "cannot reach", 75),  # storage away: retry later
    (["--manifest", "EMPTY", "--images", "/nope", "--out", "/tmp/x"], "no rows", 2),
])
def test_bad_arguments_exit_with_one_line(args, message, code, sample, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("isic_id,benign_malignant\n")
    args = [a.replace("MANIFEST", f"{sample['local']}/metadata.csv").replace("EMPTY", str(empty)) for a in args]
    proc = run_cli("prepare", *args)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
