"""Optional checks on the real HAM10000 copy in ../shared/data/ham10000 (skipped when it is absent)."""

import pytest

from skinray.config import load_config
from skinray.data.prepare import load_prepared, prepare

from conftest import HAM10000

pytestmark = [pytest.mark.real_data,
              pytest.mark.skipif(not (HAM10000 / "HAM10000_metadata.csv").exists(), reason="HAM10000 not present")]


def test_ham10000_prepare_keeps_all_and_splits_by_lesion(ray_session, tmp_path):
    cfg = load_config(overrides={"prepare.manifest": str(HAM10000 / "HAM10000_metadata.csv"),
                                 "prepare.images": str(HAM10000 / "images"), "prepare.out": str(tmp_path)})
    report = prepare(cfg)
    assert report.rows_in == report.kept == 10015 and report.rejected == 0
    assert report.lesions == 7470 and report.lesions_in_two_splits == 0
    whole = report.record["malignant_fraction"]
    for name, target in (("train", 0.72), ("val", 0.08), ("test", 0.20)):
        s = report.splits[name]
        assert abs(s["share"] - target) <= 0.01 and abs(s["malignant_fraction"] - whole) <= 0.01
    df = load_prepared(str(tmp_path))
    assert (df.groupby("lesion_id")["split"].nunique() == 1).all()
    assert report.record["imputed"]["age_approx"]["rows"] == 57
