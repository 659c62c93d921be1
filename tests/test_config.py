import pytest
import yaml

from skinray import SkinrayError
from skinray.config import SkinrayConfig, load_config, parse_override


def test_defaults_match_the_seed_recipe():
    cfg = SkinrayConfig()
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate, cfg.train.dropout) == (10, 32, 1e-3, 0.3)
    assert cfg.train.weights == "imagenet" and cfg.image.size == 224
    assert cfg.prepare.malignant_dx == ["mel", "bcc", "akiec"]
    assert cfg.score.engine == "onnx"


def test_yaml_then_sets_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 3, "batch_size": 8}, "image": {"size": 96}}))
    cfg = load_config(str(path), overrides={"train.epochs": 5, "train.workers": None},
                      sets=["train.batch_size=16", "prepare.malignant_dx=[mel, bcc]"])
    assert cfg.train.epochs == 5  # flag beats file
    assert cfg.train.batch_size == 16  # --set beats file
    assert cfg.train.workers == 2  # None flag leaves the default
    assert cfg.image.size == 96
    assert cfg.prepare.malignant_dx == ["mel", "bcc"]


def test_saved_yaml_reloads_identically(tmp_path):
    cfg = load_config(overrides={"train.epochs": 7, "prepare.schema": "ham10000"})
    path = tmp_path / "saved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(str(path)) == cfg


@pytest.mark.parametrize("bad, message", [
    (["train.epochs=0"], "train.epochs"),
    (["train.nope=1"], "train.nope"),
    (["image.resize=stretch"], "image.resize"),
])
def test_invalid_values_name_the_key(bad, message):
    with pytest.raises(SkinrayError, match=message):
        load_config(sets=bad)


def test_parse_override_types():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=true") == ("a.b", True)
    with pytest.raises(SkinrayError):
        parse_override("nonsense")
