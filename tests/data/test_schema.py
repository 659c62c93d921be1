import codecs
import json

import pandas as pd
import pytest

from skinray import SkinrayError
from skinray.data import schema


def test_detects_both_schemas():
    assert schema.detect_schema(["image_id", "dx", "lesion_id"]) == "ham10000"
    assert schema.detect_schema(["isic_id", "benign_malignant"]) == "isic"
    with pytest.raises(SkinrayError, match="schema"):
        schema.detect_schema(["foo", "bar"])


def test_ham10000_mapping():
    raw = pd.DataFrame({"lesion_id": ["L1", "L1", "L2"], "image_id": ["a", "b", "c"], "dx": ["mel", "mel", "nv"],
                        "age": ["60.0", "", "35"], "sex": ["male", "female", "unknown"],
                        "localization": ["back", "face", "acral"]})
    c = schema.to_canonical(raw, "auto", ["mel", "bcc", "akiec"])
    assert c["label"].tolist() == [1, 1, 0]
    assert c["benign_malignant"].tolist() == ["malignant", "malignant", "benign"]
    assert c["anatom_site_general"].tolist() == ["posterior torso", "head/neck", "palms/soles"]
    assert pd.isna(c["age_approx"][1]) and c["age_approx"][0] == 60
    assert c["sex"].tolist() == ["male", "female", "unknown"]
    assert c.attrs["schema"] == "ham10000"
    c2 = schema.to_canonical(raw, "ham10000", ["nv"])
    assert c2["label"].tolist() == [0, 0, 1]  # the malignant set is configurable


def test_isic_labels_unknown_become_na():
    raw = pd.DataFrame({"isic_id": ["x", "y", "z"], "benign_malignant": ["benign", "indeterminate", "Malignant"]})
    c = schema.to_canonical(raw, "isic", [])
    assert c["label"].tolist()[0] == 0 and pd.isna(c["label"][1]) and c["label"][2] == 1
    with pytest.raises(SkinrayError, match="label column"):
        schema.to_canonical(raw.drop(columns="benign_malignant"), "isic", [])
    unlabeled = schema.to_canonical(raw.drop(columns="benign_malignant"), "auto", [], labels_required=False)
    assert unlabeled["label"].isna().all()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_read_manifest_formats_lose_no_rows(tmp_path, fmt):
    df = pd.DataFrame({"isic_id": ["a", "b", ""], "benign_malignant": ["benign", None, "malignant"],
                       "age_approx": [45, None, 70]})
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    assert len(schema.read_manifest(str(path))) == 3


def test_read_manifest_rejects_unknown_format(tmp_path):
    (tmp_path / "m.xlsx").write_bytes(b"x")
    with pytest.raises(SkinrayError, match="unknown format"):
        schema.read_manifest(str(tmp_path / "m.xlsx"))


def test_manifest_errors_name_the_line_and_the_encoding(tmp_path):
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("isic_id,benign_malignant\nISIC_1,benign\nCaf\xe9,malignant\n".encode("latin-1"))
    with pytest.raises(SkinrayError, match="not UTF-8 .*line 3"):
        schema.read_manifest(str(latin))
    lines = [json.dumps({"isic_id": f"ISIC_{i}", "benign_malignant": "benign"}) for i in range(10)] + ["{broken"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SkinrayError, match="line 11 is not valid JSON"):
        schema.read_manifest(str(tmp_path / "m.jsonl"))
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(SkinrayError, match="cannot be parsed"):
        schema.read_manifest(str(tmp_path / "empty.csv"))


@pytest.mark.parametrize("encoding, bom", [("utf-16", b""), ("utf-16-le", codecs.BOM_UTF16_LE),
                                           ("utf-16-be", codecs.BOM_UTF16_BE), ("utf-16-le", b""),
                                           ("utf-16-be", b""), ("utf-32", b"")])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_utf16_or_utf32_manifest_is_read_as_such(encoding, bom, fmt, tmp_path):
    """Excel's "Unicode text" and PowerShell write UTF-16; ``utf-16``/``utf-32`` write their own byte-order mark."""
    if fmt == "csv":
        text = "isic_id,benign_malignant,anatom_site_general\nISIC_1,benign,torso\nCafé_2,malignant,\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
            {"isic_id": "ISIC_1", "benign_malignant": "benign", "anatom_site_general": "torso"},
            {"isic_id": "Café_2", "benign_malignant": "malignant", "anatom_site_general": None}])
    path = tmp_path / f"m.{fmt}"
    path.write_bytes(bom + text.encode(encoding))
    df = schema.read_manifest(str(path))
    assert list(df.columns) == ["isic_id", "benign_malignant", "anatom_site_general"]
    assert df["isic_id"].tolist() == ["ISIC_1", "Café_2"] and df["benign_malignant"].tolist() == ["benign",
                                                                                                   "malignant"]


def test_a_broken_utf16_manifest_names_its_encoding(tmp_path):
    (tmp_path / "m.csv").write_bytes(codecs.BOM_UTF16_LE + "isic_id\nISIC_1\n".encode("utf-16-le") + b"\x00\xdc")
    with pytest.raises(SkinrayError, match="looks like UTF-16 text .*iconv -f UTF-16 -t UTF-8"):
        schema.read_manifest(str(tmp_path / "m.csv"))


@pytest.mark.parametrize("schema_name, column", [("isic", "age_approx"), ("ham10000", "age")])
def test_a_number_that_is_no_age_is_read_as_unknown_and_marked(schema_name, column):
    ages = ["40", "1e300", "-3", "131", "inf", "", "forty", "0", "130"]
    ids = [f"ISIC_{i}" for i in range(len(ages))]
    df = pd.DataFrame({"isic_id": ids, "benign_malignant": "benign", column: ages} if schema_name == "isic" else
                      {"image_id": ids, "dx": "nv", column: ages}).astype("string")
    out = schema.to_canonical(df, schema_name, ["mel"])
    assert out["age_approx"].fillna(-1).tolist() == [40, -1, -1, -1, -1, -1, -1, 0, 130]
    assert out["_age_impossible"].tolist() == [False, True, True, True, True, False, False, False, False]
