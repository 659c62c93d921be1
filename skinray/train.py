"""Distributed fine-tuning on Ray Train (``TensorflowTrainer`` + ``MultiWorkerMirroredStrategy``).

Why a custom loop: Keras 3 ``model.fit`` under ``MultiWorkerMirroredStrategy`` fails with ray 2.60 / TF 2.21 /
Keras 3.15 (``PerReplica ... unsupported type``, then ``Invalid reduction dimension``; keras#20585, ray#47464), and
``ReportCheckpointCallback`` stored corrupt checkpoints when every rank saved. So each worker runs
``strategy.run`` + ``GradientTape`` (Keras' optimizer all-reduces the gradients), only rank 0 writes checkpoints,
and every rank calls ``ray.train.report`` each epoch.

Data: the prepared manifest's rows (URI + label) are Ray Data datasets; ``get_dataset_shard("train")`` gives each
worker an equal share (``streaming_split(equal=True)``), so all workers run the same number of steps. Workers read
and decode their images in a thread pool with :func:`skinray.images.decode` — the function scoring uses — since
on small nodes Ray Data decode tasks would wait for CPUs that the training workers hold.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pandas as pd

from skinray import SkinrayError, images, inference, metrics, storage
from skinray.config import ImageConfig, SkinrayConfig
from skinray.model import (CLASS_NAMES, FORMAT_VERSION, META_FILE, MODEL_FILE, ONNX_FILE, build_model,
                           export_onnx, resolve_weights, unfreeze_top, with_diagnosis_head)
from skinray.prepare import load_prepared
from skinray.runtime import ensure_ray, versions
from skinray.storage import StorageConfig

DECODE_THREADS = 4
STATE_FILE = "state.json"
LAST_WEIGHTS = "last.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
AUX_FILE = "aux_diagnosis.npz"
FAULT_MARKER = "_injected_failure_done"


# ----------------------------------------------------------------------------------------------------------
# Augmentation: numpy/PIL on the decode threads, so no random-state variables live inside the strategy.
def augment(img: np.ndarray, rng: np.random.Generator, vertical_flip: bool = False) -> np.ndarray:
    """Rotation ±20°, zoom ±20%, horizontal flip (vertical optional): the seed's augmentation."""
    from PIL import Image

    size = img.shape[0]
    angle = math.radians(rng.uniform(-20, 20))
    zoom = rng.uniform(0.8, 1.2)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    c = size / 2.0
    # inverse affine map: output pixel → input pixel, about the centre
    coeffs = (cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c)
    out = np.asarray(Image.fromarray(img).transform((size, size), Image.Transform.AFFINE, coeffs,
                                                      resample=Image.Resampling.BILINEAR))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if vertical_flip and rng.random() < 0.5:
        out = out[::-1]
    return np.ascontiguousarray(out)


def _decode_rows(rows: pd.DataFrame, storage_cfg: StorageConfig, image_cfg: ImageConfig, pool: ThreadPoolExecutor,
                 rng: np.random.Generator | None = None, vertical_flip: bool = False) -> np.ndarray:
    seeds = rng.integers(0, 2**31, size=len(rows)) if rng is not None else [None] * len(rows)

    def one(args: tuple[str, Any]) -> np.ndarray:
        uri, seed = args
        img = inference.read_and_decode(uri, storage_cfg, image_cfg)
        return augment(img, np.random.default_rng(seed), vertical_flip) if seed is not None else img

    return np.stack(list(pool.map(one, zip(rows["image_uri"], seeds)))).astype(np.float32)


def _shard_rows(shard: Any) -> pd.DataFrame:
    frames = list(shard.iter_batches(batch_size=4096, batch_format="pandas"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"image_uri": [], "label": []})


# ----------------------------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import tensorflow as tf

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # per-epoch shard reads are instant
    tf.get_logger().setLevel("ERROR")  # TF's INFO lines about collectives would drown the per-epoch progress
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = max(1, int(config["cpus_per_worker"]))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    except RuntimeError:
        pass
    import keras

    t = config["train"]
    storage_cfg = StorageConfig(**config["storage"])
    image_cfg = ImageConfig(**config["image"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    weights_arg, _ = resolve_weights(t["weights"], storage_cfg)
    total_epochs = t["epochs"] + (t["fine_tune_epochs"] if t["fine_tune_layers"] else 0)

    aux_classes = t["dx_classes"]
    with strategy.scope():
        model = build_model(image_cfg.size, t["alpha"], weights_arg, t["dense_units"], t["dropout"],
                            input_scaling=t["input_scaling"])
        fit_model = with_diagnosis_head(model, len(aux_classes)) if aux_classes else model
    aux_layer = fit_model.get_layer("aux_diagnosis") if aux_classes else None

    def make_optimizer(phase: int) -> Any:
        with strategy.scope():
            if phase == 2:
                unfreeze_top(model, t["fine_tune_layers"])
                rate = t["fine_tune_learning_rate"]
                if t["fine_tune_schedule"] == "cosine":
                    rate = keras.optimizers.schedules.CosineDecay(
                        rate, decay_steps=max(1, t["fine_tune_epochs"] * t["steps_per_epoch"]), alpha=0.01)
                opt = keras.optimizers.Adam(rate)
            else:
                opt = keras.optimizers.Adam(t["learning_rate"])
            opt.build(fit_model.trainable_variables)
        return opt

    state: dict[str, Any] = {"epoch": 0, "history": [], "best_epoch": None, "best_val_auc": None,
                             "best_val": None}
    checkpoint = ray.train.get_checkpoint()
    phase = 1
    best_weights = None  # the fine-tuning phase starts from the best head, not the last
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = json.loads(open(os.path.join(d, STATE_FILE)).read())
            phase = 2 if state["epoch"] >= t["epochs"] else 1
            optimizer = make_optimizer(phase)
            if os.path.exists(os.path.join(d, BEST_WEIGHTS)):
                model.load_weights(os.path.join(d, BEST_WEIGHTS))
                best_weights = model.get_weights()
            if not (phase == 2 and not any(h["phase"] == 2 for h in state["history"])):
                model.load_weights(os.path.join(d, LAST_WEIGHTS))
            if aux_layer is not None and os.path.exists(os.path.join(d, AUX_FILE)):
                saved_aux = np.load(os.path.join(d, AUX_FILE))
                aux_layer.set_weights([saved_aux[f"w{i}"] for i in range(len(saved_aux.files))])
            saved = np.load(os.path.join(d, OPTIMIZER_FILE))
            for i, var in enumerate(optimizer.variables):
                if f"v{i}" in saved and tuple(saved[f"v{i}"].shape) == tuple(var.shape):
                    var.assign(saved[f"v{i}"])
        if rank == 0:
            print(f"[skinray] resumed from epoch {state['epoch']}/{total_epochs}", flush=True)
    else:
        optimizer = make_optimizer(phase)

    class_weight = np.asarray(t["class_weights"], dtype=np.float32)
    loss_fn = keras.losses.BinaryCrossentropy(reduction="none")
    aux_loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    @tf.function
    def train_step(x: Any, y: Any, dx: Any, global_batch: Any) -> Any:
        def step(x: Any, y: Any, dx: Any) -> Any:
            with tf.GradientTape() as tape:
                out = fit_model(x, training=True)  # fit_model is model when the diagnosis head is off
                p, aux_logits = out if aux_layer is not None else (out, None)
                w = tf.gather(class_weight, tf.cast(y, tf.int32))
                per_example = loss_fn(tf.expand_dims(y, -1), p) * w
                if aux_layer is not None:  # dx = -1: no diagnosis recorded, no auxiliary loss
                    known = tf.cast(dx >= 0, tf.float32)
                    per_example += t["aux_diagnosis_weight"] * known * aux_loss_fn(tf.maximum(dx, 0), aux_logits)
                loss = tf.reduce_sum(per_example) / global_batch
            grads = tape.gradient(loss, fit_model.trainable_variables)
            optimizer.apply_gradients(zip(grads, fit_model.trainable_variables))
            return loss

        per_replica = strategy.run(step, args=(x, y, dx))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    predict_fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    @tf.function
    def all_sum_fn(v: Any) -> Any:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(v,)), axis=None)

    def all_sum(v: np.ndarray) -> np.ndarray:
        return np.asarray(all_sum_fn(tf.constant(v)))
    train_shard = ray.train.get_dataset_shard("train")
    val_rows = _shard_rows(ray.train.get_dataset_shard("val"))  # every rank: same weights → same decisions
    decode_pool, prefetch = ThreadPoolExecutor(DECODE_THREADS), ThreadPoolExecutor(1)
    rng = np.random.default_rng(t["seed"] * 1000 + rank)
    batch = t["batch_size"]

    def load(part: pd.DataFrame) -> np.ndarray:
        part_rng = np.random.default_rng(rng.integers(2**31)) if t["augment"] else None
        return _decode_rows(part, storage_cfg, image_cfg, decode_pool, part_rng, t["vertical_flip"])

    epoch = state["epoch"]
    phase_start = t["epochs"] if phase == 2 else 0
    while epoch < total_epochs:
        if epoch >= t["epochs"] and phase == 1:
            phase, phase_start = 2, epoch
            if best_weights is not None:
                model.set_weights(best_weights)
            optimizer = make_optimizer(2)
            train_step = tf.function(train_step.python_function)  # retrace with the new trainable set
        started = time.time()
        rows = _shard_rows(train_shard)
        rows = rows.iloc[rng.permutation(len(rows))].reset_index(drop=True)
        parts = [rows.iloc[i : i + batch] for i in range(0, len(rows), batch)]
        losses = []
        pending = prefetch.submit(load, parts[0]) if parts else None
        for i, part in enumerate(parts):
            x = pending.result()
            pending = prefetch.submit(load, parts[i + 1]) if i + 1 < len(parts) else None
            y = part["label"].to_numpy(np.float32)
            dx = part["dx_index"].to_numpy(np.int32)  # -1 everywhere when the diagnosis head is off
            losses.append(float(train_step(tf.constant(x), tf.constant(y), tf.constant(dx),
                                           tf.constant(float(len(part) * world)))))
        epoch_time = time.time() - started

        # Each rank scores every world-th validation image; one all-reduce gives every rank the same full vector,
        # so early stopping and best-epoch decisions agree across ranks (diverging ranks deadlock collectives).
        local = np.zeros(len(val_rows), np.float32)
        mine = np.arange(rank, len(val_rows), world)
        for i in range(0, len(mine), 64):
            idx = mine[i : i + 64]
            x = _decode_rows(val_rows.iloc[idx], storage_cfg, image_cfg, decode_pool)
            local[idx] = np.asarray(predict_fn(tf.constant(x))).reshape(-1)
        prob = all_sum(local) if len(local) else local
        y_val = val_rows["label"].to_numpy(int)
        ranking = metrics.ranking_metrics(y_val, prob) if len(y_val) else {}
        record: dict[str, Any] = {
            "epoch": epoch + 1, "phase": phase, "loss": float(np.mean(losses)) if losses else None,
            "train_images": int(len(rows) * world), "seconds": round(epoch_time, 1),
            "images_per_second": round(len(rows) * world / max(epoch_time, 1e-9), 1),
            "val_auc": ranking.get("roc_auc"), "val_loss": ranking.get("log_loss"), "val_brier": ranking.get("brier"),
        }
        score = record["val_auc"] if record["val_auc"] is not None else -(record["val_loss"] or 0.0)
        improved = state["best_val_auc"] is None or score > state["best_val_auc"]
        state["history"].append(record)
        state["epoch"] = epoch + 1
        if improved:
            best_weights = model.get_weights()
            state.update(best_epoch=epoch + 1, best_val_auc=score,
                         best_val={"isic_id": val_rows["isic_id"].tolist(), "label": y_val.tolist(),
                                   "prob": prob.astype(float).tolist()})
        _report(rank, model, optimizer, state, record, improved, total_epochs, aux_layer)

        # Fault injection (tests): the last worker dies once, after this epoch's checkpoint is reported.
        if t["fail_after_epoch"] and epoch + 1 == t["fail_after_epoch"] and rank == world - 1:
            marker = storage.join(t["storage_path"], t["run_name"], FAULT_MARKER)
            if not storage.exists(marker, storage_cfg):
                storage.write_text(marker, "1", storage_cfg)
                print("[skinray] injected failure: worker exits", flush=True)
                os._exit(1)
        epoch += 1
        # Early stopping per phase: a stalled head phase hands over to fine-tuning, a stalled fine-tuning ends.
        patience = t["early_stopping_patience"]
        if patience and epoch - max(state["best_epoch"], phase_start) >= patience:
            if phase == 1 and total_epochs > t["epochs"]:  # also on the head's last epoch: phase 2 still runs
                if rank == 0:
                    print(f"[skinray] no val AUC gain in {patience} epochs: on to fine-tuning", flush=True)
                epoch = max(epoch, t["epochs"])
                continue
            if rank == 0:
                print(f"[skinray] early stop: no val AUC gain in {patience} epochs", flush=True)
            break
    decode_pool.shutdown()
    prefetch.shutdown()


def _report(rank: int, model: Any, optimizer: Any, state: dict[str, Any], record: dict[str, Any], improved: bool,
            total_epochs: int, aux_layer: Any = None) -> None:
    """Every rank reports each epoch; only rank 0 attaches a checkpoint (last + best weights, optimizer, state)."""
    import ray.train

    metrics_out = {k: v for k, v in record.items() if v is not None}
    if rank != 0:
        ray.train.report(metrics_out, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        model.save_weights(os.path.join(d, LAST_WEIGHTS))
        previous = ray.train.get_checkpoint()
        if improved or previous is None:
            model.save_weights(os.path.join(d, BEST_WEIGHTS))
        else:
            with previous.as_directory() as prev_dir:
                shutil.copy(os.path.join(prev_dir, BEST_WEIGHTS), os.path.join(d, BEST_WEIGHTS))
        if aux_layer is not None:
            np.savez(os.path.join(d, AUX_FILE), **{f"w{i}": w for i, w in enumerate(aux_layer.get_weights())})
        np.savez(os.path.join(d, OPTIMIZER_FILE),
                 **{f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
        with open(os.path.join(d, STATE_FILE), "w") as f:
            json.dump(state, f)
        auc = record["val_auc"]
        print(f"[skinray] epoch {record['epoch']}/{total_epochs} phase {record['phase']} loss {record['loss']:.4f} "
              f"val_auc {'n/a' if auc is None else f'{auc:.4f}'} ({record['images_per_second']} img/s, "
              f"{record['seconds']:.0f} s)", flush=True)
        ray.train.report(metrics_out, checkpoint=ray.train.Checkpoint.from_directory(d))


# ----------------------------------------------------------------------------------------------------------
def _check_data(df: pd.DataFrame, cfg: SkinrayConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    tr, va = df[df["split"] == "train"], df[df["split"] == "val"]
    if tr.empty:
        raise SkinrayError(f"{cfg.train.prepared}: the train split is empty")
    if tr["label"].nunique() < 2:
        raise SkinrayError(f"{cfg.train.prepared}: the train split has one class only "
                           f"({CLASS_NAMES[int(tr['label'].iloc[0])]}): nothing to learn")
    if len(tr) < cfg.train.workers:
        raise SkinrayError(f"{len(tr)} training images cannot feed {cfg.train.workers} workers")
    if va.empty:
        raise SkinrayError(f"{cfg.train.prepared}: the val split is empty; the threshold is chosen on it")
    return tr, va


def _class_weights(labels: pd.Series, mode: str) -> list[float]:
    if mode == "none":
        return [1.0, 1.0]
    counts = labels.value_counts().reindex([0, 1]).fillna(0).to_numpy(float)
    return [float(len(labels) / (2 * max(c, 1.0))) for c in counts]


def _diagnosis_index(tr: pd.DataFrame, va: pd.DataFrame, weight: float) -> tuple[list[str], pd.DataFrame,
                                                                                   pd.DataFrame]:
    """The auxiliary head's classes (the train split's diagnoses) and a ``dx_index`` column (-1 = none/unknown).

    Off (no classes) when the weight is 0 or the train split records fewer than two diagnoses.
    """
    def norm(frame: pd.DataFrame) -> pd.Series:
        if "dx" not in frame:
            return pd.Series(pd.NA, index=frame.index, dtype="string")
        return frame["dx"].astype("string").str.strip().str.lower().replace("", pd.NA)

    classes = sorted(norm(tr).dropna().unique().tolist()) if weight > 0 else []
    if len(classes) < 2:
        classes = []
    lookup = {c: i for i, c in enumerate(classes)}

    def index(frame: pd.DataFrame) -> pd.DataFrame:
        codes = norm(frame).map(lambda v: lookup.get(v, -1) if isinstance(v, str) else -1)
        return frame.assign(dx_index=codes.astype(np.int32))

    return classes, index(tr), index(va)


def data_fingerprint(uri: str, storage_cfg: StorageConfig) -> str:
    import hashlib

    return hashlib.sha256(storage.read_bytes(storage.join(uri, "manifest.parquet"), storage_cfg)).hexdigest()


def _fit(cfg: SkinrayConfig, tr: pd.DataFrame, va: pd.DataFrame, run_name: str, storage_path: str,
         weights: str, dx_classes: list[str]) -> Any:
    """Launch the TensorflowTrainer; re-running with the same run name and storage resumes from its checkpoint."""
    ensure_ray()
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    import ray

    t = cfg.train
    columns = ["isic_id", "image_uri", "label", "dx_index"]
    fs, path = storage.filesystem(storage_path, cfg.storage)
    loop_config = {
        "train": {**t.model_dump(), "weights": weights, "run_name": run_name, "storage_path": storage_path,
                  "class_weights": _class_weights(tr["label"], t.class_weight),
                  "steps_per_epoch": math.ceil(len(tr) // t.workers / t.batch_size), "dx_classes": dx_classes},
        "storage": cfg.storage.model_dump(),
        "image": cfg.image.model_dump(),
        "cpus_per_worker": t.cpus_per_worker,
    }
    data_ctx = ray.data.DataContext.get_current()
    bars, data_ctx.enable_progress_bars = data_ctx.enable_progress_bars, False  # datasets carry this context
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": ray.data.from_pandas(tr[columns].reset_index(drop=True)),
                  "val": ray.data.from_pandas(va[columns].reset_index(drop=True))},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        raise SkinrayError(f"training failed: {str(exc).splitlines()[0][:500]}") from exc
    finally:
        data_ctx.enable_progress_bars = bars
    if result.checkpoint is None:
        raise SkinrayError("training finished without a checkpoint")
    return result


def _operating_point(y_val: np.ndarray, raw_val: np.ndarray, t: Any) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Calibration, decision threshold and validation report, all from the validation split."""
    both = len(set(y_val.tolist())) == 2
    informative = both and float(np.std(raw_val)) > 1e-6  # a constant score cannot be calibrated
    method = t.calibration if informative else "none"
    temperature, bias = 1.0, 0.0
    if method == "platt":
        temperature, bias = metrics.fit_platt(y_val, raw_val)
    elif method == "temperature":
        temperature = metrics.fit_temperature(y_val, raw_val)
    calibration = {"method": {"platt": "temperature and bias (Platt scaling on logits) fitted on validation",
                              "temperature": "temperature scaling fitted on validation", "none": "none"}[method],
                   "temperature": temperature, "bias": bias}
    val_prob = metrics.apply_temperature(raw_val, temperature, bias)
    if both and t.threshold_policy != "fixed":
        threshold = metrics.choose_threshold(y_val, val_prob, t.threshold_policy, t.target_sensitivity,
                                             t.threshold_confidence)
    else:
        threshold = {"threshold": 0.5, "policy": "fixed" if both else "fixed (val split has one class)"}
    val_report = metrics.full_report(y_val, val_prob, threshold["threshold"], n_boot=200) if both else None
    return calibration, threshold, val_report


def train(cfg: SkinrayConfig, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """prepared/ → model directory (model.keras, model.onnx, skinray.json); returns the metadata."""
    t = cfg.train
    if not t.prepared or not t.out:
        raise SkinrayError("train needs --prepared and --out")
    started = time.time()
    df = load_prepared(t.prepared, cfg.storage)
    tr, va = _check_data(df, cfg)
    weights_arg, weights_source = resolve_weights(t.weights, cfg.storage)
    model = build_model(cfg.image.size, t.alpha, weights_arg, t.dense_units, t.dropout,  # fails fast on bad weights
                        input_scaling=t.input_scaling)
    fingerprint = data_fingerprint(t.prepared, cfg.storage)
    import hashlib

    config_hash = hashlib.sha256((cfg.image.model_dump_json() + t.model_dump_json(
        exclude={"out", "run_name", "storage_path", "fail_after_epoch", "max_failures"})).encode()).hexdigest()
    run_name = t.run_name or f"train-{fingerprint[:8]}-{config_hash[:8]}"
    storage_path = storage.normalize(t.storage_path or storage.join(t.out, "_ray"))
    log(f"training on {len(tr):,} images ({int(tr['label'].sum()):,} malignant), validating on {len(va):,}; "
        f"{t.workers} worker(s), run {run_name}")
    # Workers run in other directories (and on other nodes): hand them absolute paths.
    weights_for_workers = weights_arg if weights_arg not in (None, "imagenet") and not storage.is_s3(t.weights) \
        else t.weights
    dx_classes, tr, va = _diagnosis_index(tr, va, t.aux_diagnosis_weight)
    if t.aux_diagnosis_weight > 0:
        log(f"auxiliary diagnosis head over {dx_classes}" if dx_classes else
            "auxiliary diagnosis head off: the train split records fewer than two diagnoses (dx)")
    result = _fit(cfg, tr, va, run_name, storage_path, weights_for_workers, dx_classes)

    with result.checkpoint.as_directory() as d:
        state = json.loads(open(os.path.join(d, STATE_FILE)).read())
        model.load_weights(os.path.join(d, BEST_WEIGHTS))
    train_seconds = time.time() - started

    with tempfile.TemporaryDirectory() as out_dir, ThreadPoolExecutor(4) as pool:
        model.save(os.path.join(out_dir, MODEL_FILE))
        samples = _decode_rows(va.head(8), cfg.storage, cfg.image, pool)
        parity = export_onnx(model, os.path.join(out_dir, ONNX_FILE), cfg.image.size, samples=samples)
        if t.tta:  # calibrate and pick the threshold on the scores that scoring will produce: flip-averaged
            log(f"scoring {len(va):,} validation images with flip TTA for calibration and threshold")
            engine = inference.OnnxEngine(os.path.join(out_dir, ONNX_FILE), threads=os.cpu_count() or 1)
            y_val = va["label"].to_numpy(int)
            raw_val = np.concatenate([
                inference.predict_arrays(engine, _decode_rows(va.iloc[i:i + 64], cfg.storage, cfg.image, pool), True)
                for i in range(0, len(va), 64)])
        else:
            best = state["best_val"]
            y_val, raw_val = np.asarray(best["label"], int), np.asarray(best["prob"], float)
        calibration, threshold, val_report = _operating_point(y_val, raw_val, t)
        meta = {
            "format_version": FORMAT_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "architecture": {"base": "MobileNetV2", "alpha": t.alpha, "include_top": False,
                             "head": f"GAP → Dense({t.dense_units}, relu) → Dropout({t.dropout}) → Dense(1, sigmoid)",
                             "fine_tuned_top_layers": t.fine_tune_layers if t.fine_tune_epochs else 0,
                             "auxiliary_training_head": ({"output": "diagnosis (softmax, training only)",
                                                          "classes": dx_classes, "loss_weight": t.aux_diagnosis_weight}
                                                         if dx_classes else None),
                             "input_scaling": "[0, 1]" if t.input_scaling == "unit" else "[-1, 1] (MobileNetV2)"},
            "recipe": cfg.recipe,
            "weights_source": weights_source,
            "preprocessing": images.preprocessing_spec(cfg.image),
            "classes": {str(k): v for k, v in CLASS_NAMES.items()},
            "output": "prob_malignant = sigmoid(logit(sigmoid output) / calibration.temperature + calibration.bias)",
            "threshold": threshold,
            "calibration": calibration,
            "tta": t.tta,
            "training": {"config": json.loads(cfg.model_dump_json(by_alias=True)), "run_name": run_name,
                         "storage_path": storage_path, "batch_size_per_worker": t.batch_size,
                         "global_batch_size": t.batch_size * t.workers, "seconds": round(train_seconds, 1),
                         "best_epoch": state["best_epoch"], "epochs_run": state["epoch"]},
            "data": {"prepared": t.prepared, "fingerprint": fingerprint, "train_rows": int(len(tr)),
                     "val_rows": int(len(va)), "train_malignant": int(tr["label"].sum())},
            "history": state["history"],
            "validation": val_report,
            "onnx": {"file": ONNX_FILE, "parity_max_abs_diff": parity, "limit": 1e-4},
            "versions": versions(),
        }
        storage.write_json(os.path.join(out_dir, META_FILE), meta)
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            f.write(cfg.to_yaml())
        storage.upload_dir(out_dir, t.out, cfg.storage)
    log(f"model written to {t.out} (best epoch {state['best_epoch']}, threshold {threshold['threshold']:.3f}, "
        f"ONNX parity {parity:.1e})")
    return meta
