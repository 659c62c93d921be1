"""Ray Train: 2 workers, MultiWorkerMirroredStrategy, checkpoints, resume after a killed worker, the artifact."""

import json
import os

import numpy as np
import pytest

from skinray import SkinrayError
from skinray.config import load_config
from skinray.decision.bounds import sensitivity_lower_bound
from skinray.model.artifact import ModelArtifact
from skinray.train.driver import train

from conftest import BUCKET, run_cli, tiny_train_overrides

pytestmark = pytest.mark.slow


def test_two_worker_training_writes_a_loadable_artifact(model_dir, prepared):
    import pandas as pd

    from skinray.model.network import forward

    art = ModelArtifact.open(model_dir)
    meta = art.meta
    assert meta.training["config"]["train"]["workers"] == 2
    assert meta.training["global_batch_size"] == 16
    assert [h["epoch"] for h in meta.history] == [1, 2]
    assert 0 < meta.threshold.threshold < 1 and meta.threshold.policy == "youden"
    assert meta.onnx.parity_max_abs_diff < 1e-4
    assert meta.preprocessing.size == 32
    assert meta.tta is True and meta.validation["n"] == meta.data["val_rows"]
    assert meta.architecture["input_scaling"].startswith("[-1, 1]")
    assert len(meta.data["fingerprint"]) == 64 and meta.data["trained_on_splits"] == ["train"]
    (source, counts), = meta.data["sources"].items()  # one source, named by the manifest's folder
    assert counts["trained_on"] == meta.data["train_rows"] and counts["held_out"] == meta.data["val_rows"]
    assert counts["trained_on_malignant"] == meta.data["train_malignant"]
    assert meta.validation["sources"][source]["n"] == meta.data["val_rows"]  # the model card's figures per source
    assert meta.versions["ray"] and meta.weights_source.startswith("none")
    assert set(meta.files) == {"model.keras", "model.onnx", "config.yaml", "reference.json", "ood.npz"}
    assert len(art.model_id) == 16
    # the validation profile that scoring runs are checked for drift against
    assert art.reference()["rows"] == meta.data["val_rows"]
    # both workers ran (and said where): the placement is part of the model's provenance
    assert [w["rank"] for w in meta.training["workers"]] == [0, 1]
    # the diagnosis output is part of the exported model: one logit per training-split diagnosis
    df = pd.read_parquet(os.path.join(prepared, "manifest.parquet"))
    assert art.diagnoses == sorted(df.loc[df["split"] == "train", "dx"].str.lower().unique())
    model = art.load_keras()  # safe_mode=True
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    out = forward(model, x)
    assert out["logit"].shape == (3,) and out["dx_logits"].shape == (3, len(art.diagnoses))
    # config.yaml reads back as the config it was trained with
    assert art.config() == load_config(overrides={**tiny_train_overrides(prepared, model_dir), "train.tta": True})


def test_killed_worker_resumes_from_checkpoint(prepared, ray_session, tmp_path):
    """Three ways of going on from a checkpoint in one run (each training run costs minutes here): Ray Train's
    restart after a killed worker, a re-run of the same command, and the diagnosis target's weights in both."""
    over = tiny_train_overrides(prepared, str(tmp_path / "m"))
    # 64 pixels, not 32: at 32 the deepest BatchNorm layers see one value per image, and this network (3 epochs of
    # 5 steps) scored with statistics of 8 values saturated its features: ONNX parity 2.1e-4 (> 1e-4) against 5e-7
    over.update({"train.epochs": 3, "train.fail_after_epoch": 1, "train.max_failures": 1, "train.run_name": "fault",
                 "train.target": "diagnosis", "train.calibration": "temperature", "image.size": 64})
    meta = train(load_config(overrides=over))
    assert [h["epoch"] for h in meta.history] == [1, 2, 3]
    assert meta.training["epochs_run"] == 3
    marker = tmp_path / "m" / "_ray" / "fault" / "_injected_failure_done"
    assert marker.exists()  # the failure really happened once
    # the diagnosis head is part of the model, so its weights travel in every checkpoint and a resumed run
    # continues them: the last checkpoint's diagnosis layer differs from the first's
    import h5py

    ckpts = sorted((tmp_path / "m" / "_ray" / "fault").glob("checkpoint_*/last.weights.h5"))
    assert len(ckpts) >= 2

    k = len(meta.architecture["diagnosis_head"]["classes"])

    def dx_kernel(path):  # Keras names saved layers by type (dense_2): find the kernel with one column per diagnosis
        with h5py.File(path) as f:
            found = []
            f.visititems(lambda name, obj: found.append(obj[()]) if name.startswith("layers/dense") and
                         getattr(obj, "shape", ()) and len(obj.shape) == 2 and obj.shape[1] == k else None)
            assert len(found) == 1
            return found[0]

    assert not np.allclose(dx_kernel(ckpts[0]), dx_kernel(ckpts[-1]))

    # the same command again, one epoch longer: resumes from the last checkpoint instead of retraining
    over["train.epochs"] = 4
    again = train(load_config(overrides=over))
    assert [h["epoch"] for h in again.history] == [1, 2, 3, 4]
    assert again.history[:3] == meta.history  # epochs 1-3 came from the checkpoint, not a new run

    # the diagnosis target end to end: the graph's logit is the log-odds readout of its diagnosis logits
    import onnxruntime as ort
    from scipy.special import logsumexp

    art = ModelArtifact.open(str(tmp_path / "m"))
    arch = again.architecture
    assert arch["target"] == "diagnosis" and "logsumexp(malignant)" in arch["head"]
    malignant = arch["diagnosis_head"]["malignant"]  # read off the labels: ISIC names, read as HAM10000 codes
    assert set(malignant) < set(art.diagnoses) and "mel" in malignant and "nv" not in malignant
    session = ort.InferenceSession(art.path("model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x})))
    logit, dx = out[again.outputs.logit].reshape(-1), out[again.outputs.dx_logits].astype("float64")
    mask = np.isin(art.diagnoses, malignant)
    np.testing.assert_allclose(logit, logsumexp(dx[:, mask], axis=1) - logsumexp(dx[:, ~mask], axis=1), atol=1e-4)
    assert set(again.threshold.diagnoses) == {"mel", "melanoma"}  # the default floors, recorded


def test_cross_validation_fits_the_operating_point_out_of_fold_and_resumes_at_the_next_fold(
        prepared, ray_session, tmp_path, monkeypatch):
    """train.folds: two fold models score every train+val image out of fold, the operating point and flip band are
    fitted on those scores, the final model trains on all of train+val for the chosen epochs; a re-run reads the
    finished folds back instead of running them; train.ensemble exports the same fold models as one graph."""
    import pandas as pd

    import skinray.train.runs as runs_module
    from skinray.data.prepare import load_prepared
    from skinray.data.prepared import dx_codes
    from skinray.decision import operating_point
    from skinray.model import views
    from skinray.train import cross_validation

    # one worker per run (three runs here; two workers are the other tests'), flips on as in the default recipe
    over = {**tiny_train_overrides(prepared, str(tmp_path / "m")), "train.folds": 2, "train.tta": True,
            "train.workers": 1}
    meta = train(load_config(overrides=over))
    df = load_prepared(prepared)
    rows = pd.concat([df[df["split"] == "train"], df[df["split"] == "val"]], ignore_index=True)
    cv = meta.training["cross_validation"]
    assert cv["folds"] == 2 and sum(f["rows"] for f in cv["per_fold"]) == len(rows)
    curve = {int(e): auc for e, auc in cv["mean_held_out_auc_by_epoch"].items()}
    assert sorted(curve) == [1, 2] and cv["epochs"] == max(curve, key=lambda e: (curve[e], -e))
    # the exported model: all of train+val, exactly the chosen epochs, the last one kept, nothing validated on
    assert meta.data["train_rows"] == meta.data["held_out_rows"] == meta.validation["n"] == len(rows)
    assert [h["epoch"] for h in meta.history] == list(range(1, cv["epochs"] + 1))
    assert meta.training["best_epoch"] == cv["epochs"] and all(h["val_auc"] is None for h in meta.history)
    assert meta.validation["scores"] == "out-of-fold scores (2 lesion-grouped folds over train+val)"
    assert meta.data["trained_on_splits"] == ["train", "val"]  # evaluate says so on the val split
    assert ModelArtifact.open(str(tmp_path / "m")).reference()["rows"] == len(rows)

    # the stored operating point is the one the out-of-fold scores give, not the final model's own
    run_dir = os.path.join(str(tmp_path / "m"), "_ray", meta.training["run_name"])
    folds = cross_validation.assign_folds(rows, 2, seed=42)
    results = [cross_validation.load_fold(run_dir, f, 2, rows.loc[folds == f, "isic_id"].tolist(), 3, None)
               for f in range(2)]
    z = cross_validation.out_of_fold(folds, results)
    op, _ = operating_point.fit(rows["label"].to_numpy(int), z.mean(axis=1), "platt", "youden", 0.85, 0.95,
                                dx_codes(rows).fillna("").to_numpy(object), {"mel": 0.8, "melanoma": 0.8})
    assert meta.calibration == op.calibration and meta.threshold == op.threshold
    assert meta.tta_band == views.fit_band(z)

    # a re-run (as after a kill once the folds were done) trains no fold again: the first run it starts is the
    # final one (stopped there: resuming a Ray Train run is the killed-worker test's)
    class Started(Exception):
        pass

    def first_run(*args, **kwargs):
        raise Started(args[4])

    monkeypatch.setattr(runs_module, "run", first_run)
    storage_path = os.path.join(str(tmp_path / "m"), "_ray")
    with pytest.raises(Started, match=f"^{meta.training['run_name']}-final$"):
        train(load_config(overrides={**over, "train.out": str(tmp_path / "m2"), "train.storage_path": storage_path}))

    # train.ensemble on the same folds starts no Ray Train run at all: the fold models are read back from their
    # runs and exported as one graph; its operating point is fitted on the same out-of-fold scores, here with a
    # sensitivity promise that also covers the spread between the fold networks (settings that train nothing)
    ens = train(load_config(overrides={**over, "train.ensemble": True, "train.out": str(tmp_path / "e"),
                                       "train.storage_path": storage_path, "train.threshold_policy": "sensitivity",
                                       "train.threshold_fold_spread": True}))
    assert ens.training["run_name"] == meta.training["run_name"]
    spread_op, _ = operating_point.fit(rows["label"].to_numpy(int), z.mean(axis=1), "platt", "sensitivity", 0.85,
                                       0.95, dx_codes(rows).fillna("").to_numpy(object),
                                       {"mel": 0.8, "melanoma": 0.8}, groups=folds)
    assert ens.calibration == op.calibration and ens.threshold == spread_op.threshold
    assert ens.threshold.fold_spread is not None and ens.threshold.fold_spread.folds == 2
    assert ens.tta_band == meta.tta_band
    assert ens.architecture["ensemble"]["members"] == 2 and ens.history == [] and ens.training["best_epoch"] is None
    assert ens.validation["scores"].startswith("out-of-fold scores (2 lesion-grouped folds")
    assert ens.architecture["ensemble"]["member_best_epochs"] == [f["best_epoch"] for f in cv["per_fold"]]

    # its graph is the mean of the two fold models' logits, each as the fold scored its held-out rows with
    from ray.train import Result

    from skinray.inference.engines import OnnxEngine
    from skinray.model.network import build_model, forward
    from skinray.train.loop import CheckpointSaver

    artifact = ModelArtifact.open(str(tmp_path / "e"))
    cfg = load_config(overrides=over)
    x = _pixels(rows.head(6), cfg)
    engine = OnnxEngine(artifact.path("model.onnx"), {"logit": artifact.meta.outputs.logit}, policy="batch")
    members = []
    for f in range(2):
        member = build_model(cfg.image.size, cfg.train.alpha, None, cfg.train.dense_units, cfg.train.dropout,
                             freeze_base=True, dx_classes=len(artifact.diagnoses))
        done = Result.from_path(os.path.join(storage_path, f"{meta.training['run_name']}-fold{f + 1}of2"))
        CheckpointSaver.load_best(done.checkpoint, member)
        members.append(forward(member, x)["logit"])
        held = rows[folds == f].head(1)  # the fold's stored held-out score (first view): this model's
        np.testing.assert_allclose(results[f].views[0, 0], forward(member, _pixels(held, cfg))["logit"][0],
                                   atol=1e-3)
    np.testing.assert_allclose(engine.run(x)["logit"].reshape(-1), np.mean(members, axis=0), atol=1e-4)

    # a fold run kept on S3 (as on a multi-node cluster) is read back the same way
    from skinray.io import storage
    from skinray.train.cross_validation import FoldResult
    from skinray.train.fold_runs import restore_fold
    from skinray.train.runs import Setup

    fold_run = f"{meta.training['run_name']}-fold2of2"
    storage.upload_dir(os.path.join(storage_path, fold_run), f"s3://{BUCKET}/cv-runs/{fold_run}")
    s3_setup = Setup(build_model(cfg.image.size, cfg.train.alpha, None, cfg.train.dense_units, cfg.train.dropout,
                                 freeze_base=True, dx_classes=len(artifact.diagnoses)),
                     meta.training["run_name"], f"s3://{BUCKET}/cv-runs", "none", [], None)
    assert restore_fold(cfg, s3_setup, fold_run, results[1])
    np.testing.assert_allclose(forward(s3_setup.model, x)["logit"], members[1], atol=1e-6)
    other_epoch = FoldResult(1, 2, results[1].isic_id, results[1].views, results[1].best_epoch + 7, [])
    assert not restore_fold(cfg, s3_setup, fold_run, other_epoch)  # not the model these scores came from

    # and it is scored like any model: calibrated probabilities, the diagnosis, Grad-CAM of the mean logit
    from skinray.inference.predict import predict

    sheet = str(tmp_path / "sheet.png")
    got = predict(str(tmp_path / "e"), rows["image_uri"].head(3).tolist(), sheet=sheet, explain=True)
    assert got["error"].isna().all() and got["prob_malignant"].between(0, 1).all() and os.path.getsize(sheet) > 0
    assert "dx_pred" in got.columns


def _pixels(rows, cfg) -> np.ndarray:
    from concurrent.futures import ThreadPoolExecutor

    from skinray.data.prepared import decode_rows

    with ThreadPoolExecutor(2) as pool:
        return decode_rows(rows, cfg.storage, cfg.image, pool)


@pytest.mark.parametrize("extra, message", [
    ({"train.weights": "/no/such/weights.h5"}, "weights file not found"),
    ({"train.weights": "imagenet", "image.size": 40}, "ImageNet MobileNetV2 weights exist for image sizes"),
])
def test_bad_training_input_is_one_clear_error(extra, message, prepared, tmp_path):
    over = {**tiny_train_overrides(prepared, str(tmp_path / "m")), **extra}
    with pytest.raises(SkinrayError, match=message):
        train(load_config(overrides=over))


def test_one_class_and_missing_prepared_data(tmp_path, prepared):
    import pandas as pd

    from skinray.io import storage

    df = pd.read_parquet(os.path.join(prepared, "manifest.parquet"))
    one = tmp_path / "one"
    one.mkdir()
    df.assign(label=0).to_parquet(one / "manifest.parquet")
    (one / "report.json").write_text(json.dumps({}))
    with pytest.raises(SkinrayError, match="one class only"):
        train(load_config(overrides=tiny_train_overrides(str(one), str(tmp_path / "m"))))
    proc = run_cli("train", "--prepared", str(tmp_path / "nothing"), "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "not a prepared dataset" in proc.stderr and "Traceback" not in proc.stderr
    assert storage.exists(prepared)


def test_fine_tuning_phase_starts_after_early_stopped_head(prepared, ray_session, tmp_path):
    over = tiny_train_overrides(prepared, str(tmp_path / "m"))
    over.update({"train.epochs": 3, "train.early_stopping_patience": 1, "train.fine_tune_layers": 10,
                 "train.fine_tune_epochs": 2, "train.class_weight": "balanced", "train.input_scaling": "unit",
                 "train.fine_tune_schedule": "cosine", "train.aux_diagnosis_weight": 1.0})
    del over["train.threshold_policy"]  # the default: sensitivity >= 0.85 with 95% confidence
    meta = train(load_config(overrides=over))
    th = meta.threshold
    assert (th.policy, th.target_sensitivity, th.confidence) == ("sensitivity", 0.85, 0.95)
    n_pos = meta.validation["n_pos"]
    bound = float(sensitivity_lower_bound(round(th.sensitivity * n_pos), n_pos, 0.95))
    assert th.sensitivity_lower_bound == pytest.approx(bound) and th.target_met == (bound >= 0.85)
    if not th.target_met:  # too few validation positives for the promise: catch every one of them
        assert th.sensitivity == 1.0
    head_dx = meta.architecture["diagnosis_head"]
    import pandas as pd

    df = pd.read_parquet(os.path.join(prepared, "manifest.parquet"))
    assert head_dx["classes"] == sorted(df.loc[df["split"] == "train", "dx"].str.lower().unique())
    assert len(head_dx["classes"]) > 2 and head_dx["loss_weight"] == 1.0
    keras_model = ModelArtifact.open(str(tmp_path / "m")).load_keras()
    assert keras_model.output_names == ["logit", "dx_logits"]
    head = [h["epoch"] for h in meta.history if h["phase"] == 1]
    tune = [h["epoch"] for h in meta.history if h["phase"] == 2]
    assert head == list(range(1, len(head) + 1)) and 1 <= len(head) <= 3
    assert tune and tune == [4, 5][: len(tune)]  # phase 2 always runs, numbered after the head's budget
    assert meta.training["best_epoch"] in head + tune
    assert meta.architecture["fine_tuned_top_layers"] == 10
    assert meta.architecture["input_scaling"] == "[0, 1]"
    assert meta.training["config"]["train"]["class_weight"] == "balanced"
    assert keras_model.get_layer("unit_scaling")


def test_the_same_seed_trains_the_same_network(model_dir, prepared, ray_session, tmp_path):
    """Seeded initial weights and dropout, batches dealt from a seeded permutation: the session model's recipe
    trained again gives the same epochs and the same weights (of two demo runs of one commit, one collapsed and
    one learned: issue 25)."""
    first = ModelArtifact.open(model_dir)
    again = train(load_config(overrides={**tiny_train_overrides(prepared, str(tmp_path / "m")), "train.tta": True}))
    assert again.training["run_name"] == first.meta.training["run_name"]  # the same run, in another storage path
    assert [(h["loss"], h["val_auc"]) for h in again.history] == [(h["loss"], h["val_auc"])
                                                                    for h in first.meta.history]
    weights = first.load_keras().get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(
        weights, ModelArtifact.open(str(tmp_path / "m")).load_keras().get_weights(), strict=True))


def test_init_model_starts_from_a_models_base_with_a_new_head(model_dir, prepared, ray_session, tmp_path):
    from skinray.model.network import base_of

    over = tiny_train_overrides(prepared, str(tmp_path / "m2"))
    for key in ("train.weights", "train.alpha", "image.size"):  # adopted from the model it starts from
        del over[key]
    over.update({"train.init_model": model_dir, "train.epochs": 1})
    meta = train(load_config(overrides=over))
    start = ModelArtifact.open(model_dir)
    assert meta.data["initialised_from"]["model_id"] == start.model_id
    assert meta.weights_source.startswith(f"the base of skinray model {start.model_id}")
    assert meta.preprocessing.size == 32 and meta.architecture["alpha"] == 0.35
    before, after = base_of(start.load_keras()), base_of(ModelArtifact.open(str(tmp_path / "m2")).load_keras())
    # the head phase trains a new head on the frozen base: the base is the starting model's, weight for weight
    for a, b in zip(before.get_weights(), after.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SkinrayError, match="--weights or --init-model"):
        train(load_config(overrides={**over, "train.weights": "none"}))


def test_diagnosis_target_without_diagnoses_is_one_clear_error(prepared, tmp_path):
    import pandas as pd

    df = pd.read_parquet(os.path.join(prepared, "manifest.parquet"))
    no_dx = tmp_path / "no-dx"
    no_dx.mkdir()
    df.assign(dx=None).to_parquet(no_dx / "manifest.parquet")
    (no_dx / "report.json").write_text(json.dumps({}))
    over = {**tiny_train_overrides(str(no_dx), str(tmp_path / "m")), "train.target": "diagnosis"}
    with pytest.raises(SkinrayError, match="train.target diagnosis needs a dx column"):
        train(load_config(overrides=over))


def test_operating_point_settings_keep_the_run_name():
    from skinray.train.plan import run_name

    base = load_config()
    same = load_config(sets=["train.threshold_policy=youden", "train.calibration=temperature", "train.tta=false",
                             "train.diagnosis_sensitivity={}", "train.target_sensitivity=0.9",
                             "train.tta_near_threshold=false", "train.above_chance_confidence=0"])
    assert run_name(same, "f" * 64) == run_name(base, "f" * 64)  # a refit resumes the run, it does not retrain
    # settings added since (colour constancy, photometric augmentation) leave earlier runs' names as they were at
    # their defaults: this is the name the defaults had before them (change it only with a default on purpose)
    assert run_name(base, "f" * 64) == "train-ffffffff-b7c64257"
    for changed in ("train.target=diagnosis", "train.epochs=5", "image.size=192",
                    "image.color_constancy=shades_of_gray", "train.photometric_augment=true"):
        assert run_name(load_config(sets=[changed]), "f" * 64) != run_name(base, "f" * 64), changed


def test_a_fold_whose_run_is_gone_is_run_again_for_an_ensemble(tmp_path, caplog):
    """The fold's scores were kept but its Ray Train run was deleted: an ensemble member cannot be rebuilt from
    them, so the fold is trained and scored again (not exported from a different model)."""
    from skinray.model.network import build_model
    from skinray.train.cross_validation import FoldResult
    from skinray.train.fold_runs import restore_fold
    from skinray.train.runs import Setup

    cfg = load_config()
    setup = Setup(build_model(32, alpha=0.35, weights=None), "train-x", str(tmp_path / "_ray"), "none", [], None)
    done = FoldResult(0, 2, ["a"], np.zeros((1, 1)), 3, [{"epoch": 3, "val_auc": 0.7}])
    assert restore_fold(cfg, setup, "train-x-fold1of2", done) is False
    assert "fold 1/2: its model cannot be read back" in caplog.text and "running the fold again" in caplog.text


def test_a_network_that_did_not_learn_is_not_written(prepared, ray_session, tmp_path, capsys):
    """Every validation row shows one image, so the validation outputs are constant whatever the network learned:
    `skinray train` ends with one line and exit 3, and --out is not created (no model, no checkpoint folder)."""
    import pandas as pd

    from skinray.cli import main

    df = pd.read_parquet(os.path.join(prepared, "manifest.parquet"))
    val = df["split"] == "val"
    df.loc[val, "image_uri"] = df.loc[val, "image_uri"].iloc[0]
    one_image = tmp_path / "one-image-val"
    one_image.mkdir()
    df.to_parquet(one_image / "manifest.parquet")
    (one_image / "report.json").write_text(json.dumps({}))
    out = tmp_path / "m"
    rc = main(["train", "--prepared", str(one_image), "--out", str(out), "--workers", "1", "--weights", "none",
               "--image-size", "32", "--head-epochs", "1", "--fine-tune-epochs", "0", "--batch-size", "8",
               "--set", "train.alpha=0.35", "--set", "train.tta=false"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("skinray: error:")]
    assert rc == 3, err[-3000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "did not learn, no model written" in errors[0] and "outputs are constant" in errors[0]
    assert "best epoch (1)" in errors[0] and f"{int(val.sum())} held-out images" in errors[0]
    assert not out.exists()
