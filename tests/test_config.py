import pytest
import yaml

from skinray import SkinrayError
from skinray.config import SkinrayConfig, load_config
from skinray.config_layers import parse_override


def test_defaults_are_the_improved_recipe_on_the_seed_model():
    cfg = SkinrayConfig()
    assert (cfg.train.epochs, cfg.train.batch_size * cfg.train.workers, cfg.train.learning_rate,
            cfg.train.dropout, cfg.train.dense_units) == (4, 32, 1e-3, 0.3, 64)
    assert load_config(recipe="improved").model_copy(update={"recipe": None}) == cfg
    assert cfg.train.weights == "imagenet" and cfg.image.size == 224
    assert cfg.manifest.malignant_dx == ["mel", "bcc", "akiec"]
    assert cfg.inference.engine == "onnx"


def test_yaml_then_sets_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 3, "batch_size": 8}, "image": {"size": 96}}))
    cfg = load_config(str(path), overrides={"train.epochs": 5, "train.workers": None},
                      sets=["train.batch_size=16", "manifest.malignant_dx=[mel, bcc]"])
    assert cfg.train.epochs == 5  # flag beats file
    assert cfg.train.batch_size == 16  # --set beats file
    assert cfg.train.workers == 2  # None flag leaves the default
    assert cfg.image.size == 96
    assert cfg.manifest.malignant_dx == ["mel", "bcc"]


def test_saved_yaml_reloads_identically(tmp_path):
    cfg = load_config(overrides={"train.epochs": 7, "manifest.schema": "ham10000"})
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
    (["train.folds=1"], "folds must be 0"),
    (["train.ensemble=true"], "ensemble needs folds"),
    (["train.threshold_fold_spread=true"], "threshold_fold_spread needs folds"),
    (["train.folds=5", "train.threshold_fold_spread=true", "train.threshold_policy=youden"],
     "threshold_fold_spread needs folds"),
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
    from skinray.config_layers import recipes

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


def test_moved_keys_of_older_config_files_still_work(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"prepare": {"image_template": "{images}/{lesion_id}.jpg", "schema": "isic"},
                                    "score": {"engine": "tf", "tta": False, "actors": 3, "use_gpu": True,
                                              "gpu_wait_seconds": 5},
                                    "evaluate": {"bootstrap": 10}}))
    cfg = load_config(str(path))
    assert (cfg.manifest.image_template, cfg.manifest.schema_name) == ("{images}/{lesion_id}.jpg", "isic")
    assert (cfg.inference.engine, cfg.inference.tta, cfg.metrics.bootstrap) == ("tf", False, 10)
    # the actor pool is shared by evaluate and score: it moved to the inference section
    assert (cfg.inference.actors, cfg.inference.use_gpu, cfg.inference.gpu_wait_seconds) == (3, True, 5)
    assert load_config(sets=["score.max_actors=4"]).inference.max_actors == 4
    with pytest.raises(SkinrayError, match="min_actors"):
        load_config(overrides={"inference.min_actors": 5, "inference.max_actors": 2})


def test_evaluate_and_score_take_the_same_pool_flags():
    from skinray.cli import _parser, build_config

    for command in (["evaluate", "--model", "m", "--prepared", "p", "--out", "o"],
                    ["score", "--model", "m", "--input", "i", "--out", "o"]):
        cfg = build_config(_parser().parse_args([*command, "--actors", "2", "--gpu", "--gpu-wait", "7"]))
        assert (cfg.inference.actors, cfg.inference.use_gpu, cfg.inference.gpu_wait_seconds) == (2, True, 7)


@pytest.mark.parametrize("date", ["20260202", "2026-W05-1", "2026-02-30", "26-02-02", "2026-2-2", "last night"])
def test_score_dates_are_iso_days_only(date):
    with pytest.raises(SkinrayError, match="score.date.*YYYY-MM-DD"):
        load_config(overrides={"score.date": date})


def test_score_dates_are_normalised():
    assert load_config(sets=["score.date=2026-11-25"]).score.date == "2026-11-25"  # YAML reads it as a date
    assert load_config(overrides={"score.date": " 2026-11-25 "}).score.date == "2026-11-25"


@pytest.mark.parametrize("run_id", ["../../../escaped_run", "..", ".", "a/b", "a b", "x" * 65, "", "é"])
def test_unsafe_run_ids_are_refused(run_id):
    with pytest.raises(SkinrayError, match="score.run_id"):
        load_config(overrides={"score.run_id": run_id})


def test_safe_run_ids_and_templates_in_set():
    cfg = load_config(sets=["score.run_id=nightly-2026.11_25", "manifest.image_template={images}/{x}.jpg"])
    assert cfg.score.run_id == "nightly-2026.11_25" and cfg.manifest.image_template == "{images}/{x}.jpg"


def test_diagnosis_sensitivity_targets():
    assert load_config().train.diagnosis_sensitivity == {"mel": 0.8, "melanoma": 0.8}  # HAM10000's and ISIC's name
    assert load_config(sets=["train.diagnosis_sensitivity={' MEL ': 0.9}"]).train.diagnosis_sensitivity == {"mel": 0.9}
    assert load_config(sets=["train.diagnosis_sensitivity={}"]).train.diagnosis_sensitivity == {}
    for bad in ("{mel: 1.5}", "{mel: 0}", "[mel]", "{'': 0.8}"):
        with pytest.raises(SkinrayError, match="train.diagnosis_sensitivity"):
            load_config(sets=[f"train.diagnosis_sensitivity={bad}"])


def test_train_folds_and_ensemble_flags_reach_the_config():
    from skinray.cli import _parser, build_config

    cfg = build_config(_parser().parse_args(["train", "--folds", "3", "--ensemble"]))
    assert cfg.train.folds == 3 and cfg.train.ensemble is True
    assert build_config(_parser().parse_args(["train"])).train.ensemble is False
    with pytest.raises(SkinrayError, match="ensemble needs folds"):
        build_config(_parser().parse_args(["train", "--ensemble"]))


def test_today_and_yesterday_are_taken_in_the_clinics_time_zone():
    import datetime as dt

    late = dt.datetime(2026, 12, 8, 1, 30, tzinfo=dt.timezone.utc)  # 01:30 UTC is still Dec 7 in New York
    cfg = load_config(overrides={"score.date": "yesterday", "score.timezone": "America/New_York"})
    assert cfg.score.date == "yesterday" and cfg.score.night(late) == "2026-12-06"
    cfg = load_config(overrides={"score.date": "Today", "score.timezone": "Europe/Vienna"})
    assert cfg.score.night(late) == "2026-12-08"
    assert load_config().score.night(late) == "2026-12-08"  # default: today, UTC
    assert load_config(overrides={"score.date": "2026-11-25"}).score.night(late) == "2026-11-25"
    with pytest.raises(SkinrayError, match="IANA time zone"):
        load_config(overrides={"score.timezone": "Mars/Olympus"})


@pytest.mark.parametrize("setting, where, shown", [
    ("train.target_sensitivity=nan", "train.target_sensitivity", "'nan'"),
    ("train.threshold_confidence=.nan", "train.threshold_confidence", "nan"),
    ("score.max_failure_fraction=.inf", "score.max_failure_fraction", "inf"),
    ("train.diagnosis_sensitivity={mel: .nan}", "train.diagnosis_sensitivity.mel", "nan"),
    ("train.alpha=-.inf", "train.alpha", "-inf"),  # no range to fall out of: refused all the same
])
def test_a_nan_or_infinite_value_is_called_not_finite(setting, where, shown, capsys, tmp_path):
    from skinray.cli import main

    assert main(["score", "--model", "m", "--input", "i", "--out", "o", "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"skinray: error: invalid config value for {where}: {shown} is not a finite number"]
    config = tmp_path / "c.yaml"
    key, value = parse_override(setting)
    section, name = key.split(".")
    config.write_text(yaml.safe_dump({section: {name: value}}))  # the same value in a config file
    with pytest.raises(SkinrayError, match=f"{where}: {shown} is not a finite number"):
        load_config(str(config))


@pytest.mark.parametrize("run_id", ["-x", "--help", ".hidden", "_x"])
def test_a_run_id_starts_with_a_letter_or_digit(run_id, capsys):
    """A run id is a folder name and a command-line argument: ``-x`` would read as an option."""
    from skinray.cli import main

    assert main(["score", "--model", "m", "--input", "i", "--out", "o", f"--run-id={run_id}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "score.run_id: " in err[0] and "starting with a letter or digit" in err[0], err
    assert load_config(overrides={"score.run_id": "0-x"}).score.run_id == "0-x"
