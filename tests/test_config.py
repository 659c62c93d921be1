import pytest
import yaml

from skinray import SkinrayError
from skinray.config import SkinrayConfig, load_config, parse_override


def test_defaults_are_the_improved_recipe_on_the_seed_model():
    cfg = SkinrayConfig()
    assert (cfg.train.epochs, cfg.train.batch_size * cfg.train.workers, cfg.train.learning_rate,
            cfg.train.dropout, cfg.train.dense_units) == (4, 32, 1e-3, 0.3, 64)
    assert load_config(recipe="improved").model_copy(update={"recipe": None}) == cfg
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
    (["train.target_sensitivity=null"], "needs train.target_sensitivity"),
    (["train.threshold_confidence=1.5"], "train.threshold_confidence"),
    (["train.aux_diagnosis_weight=-1"], "train.aux_diagnosis_weight"),
])
def test_invalid_values_name_the_key(bad, message):
    with pytest.raises(SkinrayError, match=message):
        load_config(sets=bad)


def test_parse_override_types():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=true") == ("a.b", True)
    with pytest.raises(SkinrayError):
        parse_override("nonsense")


def test_recipes_are_a_layer_under_file_and_flags(tmp_path):
    from skinray.config import recipes

    assert {"seed", "improved"} <= set(recipes())
    seed = load_config(recipe="seed")
    assert seed.recipe == "seed" and seed.train.input_scaling == "unit"
    assert seed.train.batch_size * seed.train.workers == 32 and seed.train.threshold_policy == "fixed"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"recipe": "seed", "train": {"epochs": 3}}))
    cfg = load_config(str(path), overrides={"train.learning_rate": 1e-4})
    assert (cfg.recipe, cfg.train.epochs, cfg.train.learning_rate, cfg.train.input_scaling) == ("seed", 3, 1e-4, "unit")
    assert load_config(str(path), recipe="improved").recipe == "improved"  # --recipe wins over the file's
    # a saved config reloads to the same thing: the recipe is already folded into it
    saved = tmp_path / "saved.yaml"
    saved.write_text(cfg.to_yaml())
    assert load_config(str(saved)) == cfg
    with pytest.raises(SkinrayError, match="unknown recipe 'nope'.*seed"):
        load_config(recipe="nope")
