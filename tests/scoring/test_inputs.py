"""What a scoring run reads: every manifest row kept once, and an output that can never be read back as input."""

import json
import os

import pandas as pd
import pytest

from skinray import SkinrayError
from skinray.config import ManifestConfig
from skinray.io.storage import StorageConfig
from skinray.scoring import inputs as score_inputs


def _write(path, fmt: str, ids: list) -> None:
    frame = pd.DataFrame({"isic_id": ids, "age_approx": [40 + i for i in range(len(ids))]})
    if fmt == "csv":
        frame.to_csv(path, index=False)  # None → an empty cell
    elif fmt == "parquet":
        frame.to_parquet(path)  # None → a null
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))  # None → null


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_a_row_with_an_empty_or_null_id_is_kept_once_with_its_error(fmt, tmp_path):
    manifest = tmp_path / f"m.{fmt}"
    _write(manifest, fmt, ["ISIC_1", None, "ISIC_3", " "])
    rows = score_inputs.load(str(manifest), "auto", str(tmp_path), ManifestConfig(), StorageConfig()).rows
    assert rows["input_row"].tolist() == [0, 1, 2, 3]
    assert rows["age_approx"].tolist() == [40, 41, 42, 43]
    errors = rows["input_error"].fillna("").tolist()
    assert errors[0] == errors[2] == ""
    assert errors[1].startswith("empty_id:") and errors[3].startswith("empty_id:")
    assert rows["image_uri"].fillna("").tolist() == [os.path.join(str(tmp_path), "ISIC_1.jpg"), "",
                                                     os.path.join(str(tmp_path), "ISIC_3.jpg"), ""]


def test_an_empty_image_uri_is_an_empty_id_row(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"image_uri": ["a.jpg", None, "b.jpg"]}).to_csv(manifest, index=False)
    rows = score_inputs.load(str(manifest), "auto", str(tmp_path), ManifestConfig(), StorageConfig()).rows
    errors = rows["input_error"].fillna("").tolist()
    assert errors[0] == errors[2] == "" and errors[1].startswith("empty_id:")


def test_out_and_input_may_not_overlap_through_a_symlink(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out-link").symlink_to(tmp_path / "in" / "out", target_is_directory=True)  # out inside in
    (tmp_path / "in-link").symlink_to(tmp_path / "elsewhere" / "in", target_is_directory=True)  # in inside out
    with pytest.raises(SkinrayError, match="overlap"):
        score_inputs.check_not_nested(str(tmp_path / "in"), str(tmp_path / "out-link"))
    with pytest.raises(SkinrayError, match="overlap"):
        score_inputs.check_not_nested(str(tmp_path / "in-link"), str(tmp_path / "elsewhere"))
    with pytest.raises(SkinrayError, match="overlap"):
        score_inputs.check_not_nested(str(tmp_path / "in-link"), str(tmp_path / "elsewhere" / "in"))
    score_inputs.check_not_nested(str(tmp_path / "in"), str(tmp_path / "elsewhere"))  # apart: fine
    score_inputs.check_not_nested("s3://bucket/in", "s3://bucket/input-scores")
    with pytest.raises(SkinrayError, match="overlap"):
        score_inputs.check_not_nested("s3://bucket/in/", "s3://bucket/in/out")


def test_an_age_that_is_no_age_is_scored_as_unknown_and_counted(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"isic_id": ["a", "b", "c", "d"], "age_approx": ["1e300", "55", "-1", ""]}).to_csv(manifest,
                                                                                                   index=False)
    loaded = score_inputs.load(str(manifest), "auto", str(tmp_path), ManifestConfig(), StorageConfig())
    assert loaded.rows["age_approx"].fillna(-1).tolist() == [-1, 55, -1, -1]  # never float32 infinity
    assert loaded.nulled == {"age_approx": 2} and len(loaded.rows) == 4
