"""What every Ray Train worker runs: a short loop over phases and epochs (the schedule of
:mod:`skinray.train.schedule`), and a checkpoint object that owns save and restore.

Why a custom loop: Keras 3 ``model.fit`` under ``MultiWorkerMirroredStrategy`` fails with ray 2.60 / TF 2.21 /
Keras 3.15 (``PerReplica ... unsupported type``, then ``Invalid reduction dimension``; keras#20585, ray#47464), and
``ReportCheckpointCallback`` stored corrupt checkpoints when every rank saved. So each worker runs ``strategy.run``
+ ``GradientTape`` (Keras' optimizer all-reduces the gradients), only rank 0 writes checkpoints, and every rank
reports each epoch. The phase/resume rules are plain functions in :mod:`skinray.train.schedule`, tested without
Ray.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from skinray import SkinrayError
from skinray.config import ImageConfig, TrainConfig
from skinray.data.prepared import decode_rows, shard_rows
from skinray.decision import metrics
from skinray.io import storage
from skinray.io.storage import StorageConfig
from skinray.model.network import build_model, resolve_weights, unfreeze_top
from skinray.runtime import import_tensorflow, node_id
from skinray.train import learned
from skinray.train.schedule import Phase, TrainState, epoch_share, next_position, schedule, stopped_early

DECODE_THREADS = 4
VAL_BATCH = 64  # images per scoring batch: the workers' validation, and the driver's through the exported graph
STATE_FILE = "state.json"
LAST_WEIGHTS = "last.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
FAULT_MARKER = "_injected_failure_done"


# --- the checkpoint object ---------------------------------------------------------------------------------------


class CheckpointSaver:
    """Owns a run's checkpoints both ways: last and best weights, the optimizer of the phase, the state."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def restore(self, model: Any) -> tuple[TrainState, list[np.ndarray] | None, dict[str, np.ndarray] | None,
                                           int | None]:
        """(state, best weights, optimizer values, the phase those values belong to); a fresh state without one.

        Leaves the *last* weights in ``model``.
        """
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return TrainState(), None, None, None
        with checkpoint.as_directory() as d:
            state, phase = self._read_state(d)
            model.load_weights(os.path.join(d, BEST_WEIGHTS))
            best = model.get_weights()
            model.load_weights(os.path.join(d, LAST_WEIGHTS))
            with np.load(os.path.join(d, OPTIMIZER_FILE)) as opt:
                optimizer = {k: opt[k] for k in opt.files}
        return state, best, optimizer, phase

    @staticmethod
    def load_best(checkpoint: Any, model: Any) -> TrainState:
        """The driver's side, after the run: the best weights into ``model`` and the run's state."""
        with checkpoint.as_directory() as d:
            state, _ = CheckpointSaver._read_state(d)
            model.load_weights(os.path.join(d, BEST_WEIGHTS))
        return state

    @staticmethod
    def _read_state(d: str) -> tuple[TrainState, int | None]:
        with open(os.path.join(d, STATE_FILE)) as f:
            saved = json.load(f)
        phase = saved.pop("optimizer_phase", None)
        saved.pop("best_val", None)  # checkpoints before 2026-12-06 kept the best epoch's validation logits
        return TrainState(**saved), phase

    def save(self, model: Any, optimizer: Any, state: TrainState, phase: Phase, improved: bool,
             record: dict[str, Any]) -> None:
        """Every rank reports the epoch; rank 0 attaches the checkpoint."""
        import ray.train

        metrics_out = {k: v for k, v in record.items() if v is not None}
        if self.rank != 0:
            ray.train.report(metrics_out, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            model.save_weights(os.path.join(d, LAST_WEIGHTS))
            previous = ray.train.get_checkpoint()
            if improved or previous is None:
                model.save_weights(os.path.join(d, BEST_WEIGHTS))
            else:
                with previous.as_directory() as prev:
                    with open(os.path.join(prev, BEST_WEIGHTS), "rb") as src, \
                            open(os.path.join(d, BEST_WEIGHTS), "wb") as dst:
                        dst.write(src.read())
            np.savez(os.path.join(d, OPTIMIZER_FILE),
                     **{f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
            with open(os.path.join(d, STATE_FILE), "w") as f:
                json.dump({**asdict(state), "optimizer_phase": phase.number}, f)
            ray.train.report(metrics_out, checkpoint=ray.train.Checkpoint.from_directory(d))


# --- the worker --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """What the driver decides for a run besides the config."""

    run_name: str
    storage_path: str
    weights: str  # what the workers load: imagenet, none or an absolute path/URI
    class_weights: list[float]
    steps_per_epoch: int
    dx_classes: list[str]
    malignant_dx: list[bool] | None = None  # train.target diagnosis: the readout's malignant diagnoses
    # the final model of a cross-validated training: a fixed number of epochs, no validation, the last epoch kept
    # (there is no held-out split left to choose by: the folds chose the epoch count)
    last_epoch: int | None = None
    progress: Any = None  # a ray.util.queue.Queue: epoch records and worker placement for the driver's console


class Worker:
    """One Ray Train worker's model, optimizer and data; its methods are the loop's steps."""

    def __init__(self, config: dict[str, Any]) -> None:
        import ray.train

        tf = import_tensorflow()
        import keras

        self.t = TrainConfig(**config["train"])
        self.spec = RunSpec(**config["spec"])
        self.storage_cfg = StorageConfig(**config["storage"])
        self.image_cfg = ImageConfig(**config["image"])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        threads = max(1, int(self.t.cpus_per_worker))
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(2)
        except RuntimeError:
            pass
        gpus = tf.config.list_physical_devices("GPU")
        self._announce(gpus)
        if self.t.use_gpu and not gpus:
            raise SkinrayError(f"train --gpu: TensorFlow on node {node_id()} sees no GPU; install "
                               "skinray[train,gpu] (tensorflow[and-cuda]) on the GPU nodes")
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        weights, _ = resolve_weights(self.spec.weights, self.storage_cfg)
        keras.utils.set_random_seed(self.t.seed)  # the same initial weights and dropout masks on every run
        with self.strategy.scope():
            self.model = build_model(self.image_cfg.size, self.t.alpha, weights, self.t.dense_units, self.t.dropout,
                                     input_scaling=self.t.input_scaling, dx_classes=len(self.spec.dx_classes),
                                     malignant_dx=self.spec.malignant_dx)
        self.has_dx = len(self.spec.dx_classes) > 1
        self.pool = ThreadPoolExecutor(DECODE_THREADS)
        self.prefetch = ThreadPoolExecutor(1)
        # every rank reads all training rows (not pixels: small) in one order and takes its share per epoch
        self.train_rows = shard_rows(ray.train.get_dataset_shard("train")).sort_values(
            ["isic_id", "image_uri"], kind="stable").reset_index(drop=True)
        self.val_rows = shard_rows(ray.train.get_dataset_shard("val"))  # every rank: same decisions
        if self.spec.last_epoch is not None:
            self.val_rows = self.val_rows.head(0)
        self.optimizer: Any = None
        self.step: Any = None

    def _announce(self, gpus: list[Any]) -> None:
        if self.spec.progress is not None:
            self.spec.progress.put({"event": "worker", "rank": self.rank, "node_id": node_id(),
                                    "gpus": [g.name for g in gpus]})

    def start_phase(self, phase: Phase, optimizer_values: dict[str, np.ndarray] | None = None) -> None:
        """Trainable layers and a fresh optimizer for ``phase`` (its saved values when resuming inside it)."""
        import keras
        import tensorflow as tf

        with self.strategy.scope():
            if phase.unfreeze_layers:
                unfreeze_top(self.model, phase.unfreeze_layers)
            rate: Any = phase.learning_rate
            if phase.cosine:
                rate = keras.optimizers.schedules.CosineDecay(
                    rate, decay_steps=max(1, phase.epochs * self.spec.steps_per_epoch), alpha=0.01)
            self.optimizer = keras.optimizers.Adam(rate)
            self.optimizer.build(self.model.trainable_variables)
        for i, var in enumerate(self.optimizer.variables if optimizer_values else []):
            saved = optimizer_values.get(f"v{i}")
            if saved is not None and tuple(saved.shape) == tuple(var.shape):
                var.assign(saved)
        self.step = tf.function(self._step_fn())  # traced anew: the trainable set changed

    def _step_fn(self) -> Any:
        import keras
        import tensorflow as tf

        class_weight = tf.constant(self.spec.class_weights, tf.float32)
        bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction="none")
        cce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
        model, optimizer, strategy, has_dx = self.model, self.optimizer, self.strategy, self.has_dx
        dx_weight = float(self.t.aux_diagnosis_weight)
        dx_target = self.spec.malignant_dx is not None

        def replica(x: Any, y: Any, dx: Any, global_batch: Any) -> Any:
            with tf.GradientTape() as tape:
                out = model(x, training=True)
                logit, dx_logits = (out[0], out[1]) if has_dx else (out, None)
                w = tf.gather(class_weight, tf.cast(y, tf.int32))
                binary = bce(tf.expand_dims(y, -1), logit) * w
                if dx_target:  # the diagnosis is the target; a row without one trains the readout on its label
                    known = tf.cast(dx >= 0, tf.float32)
                    per_example = known * cce(tf.maximum(dx, 0), dx_logits) + (1.0 - known) * binary
                elif has_dx:  # dx = -1: no diagnosis recorded, no diagnosis loss
                    known = tf.cast(dx >= 0, tf.float32)
                    per_example = binary + dx_weight * known * cce(tf.maximum(dx, 0), dx_logits)
                else:
                    per_example = binary
                loss = tf.reduce_sum(per_example) / global_batch
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        def step(x: Any, y: Any, dx: Any, global_batch: Any) -> Any:
            per_replica = strategy.run(replica, args=(x, y, dx, global_batch))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return step

    def train_epoch(self, epoch: int) -> tuple[float | None, int, float]:
        """One pass over this worker's share of ``epoch``; (mean loss, images seen by all workers, seconds)."""
        import tensorflow as tf

        started = time.time()
        rows = self.train_rows.iloc[epoch_share(len(self.train_rows), self.t.seed, epoch, self.rank, self.world)]
        rng = np.random.default_rng([self.t.seed, epoch, self.rank])  # augmentation, reproducible after a resume
        b = self.t.batch_size
        parts = [rows.iloc[i : i + b] for i in range(0, len(rows), b)]
        part_seeds = rng.integers(2**31, size=len(parts))

        def load(part: pd.DataFrame, seed: int) -> np.ndarray:
            part_rng = np.random.default_rng(seed) if self.t.augment else None
            return decode_rows(part, self.storage_cfg, self.image_cfg, self.pool, part_rng, self.t.vertical_flip,
                               self.t.photometric_augment)

        losses = []
        pending = self.prefetch.submit(load, parts[0], part_seeds[0]) if parts else None
        for i, part in enumerate(parts):
            x = pending.result()
            pending = self.prefetch.submit(load, parts[i + 1], part_seeds[i + 1]) if i + 1 < len(parts) else None
            losses.append(float(self.step(tf.constant(x), tf.constant(part["label"].to_numpy(np.float32)),
                                          tf.constant(part["dx_index"].to_numpy(np.int32)),
                                          tf.constant(float(len(part) * self.world)))))
        return (float(np.mean(losses)) if losses else None), len(rows) * self.world, time.time() - started

    def validate(self) -> np.ndarray:
        """Validation logits, the same full vector on every rank (each scores every world-th image, all-reduced)."""
        import tensorflow as tf

        from skinray.model.network import forward

        local = np.zeros(len(self.val_rows), np.float32)
        mine = np.arange(self.rank, len(self.val_rows), self.world)
        for i in range(0, len(mine), VAL_BATCH):
            idx = mine[i : i + VAL_BATCH]
            local[idx] = forward(self.model, decode_rows(self.val_rows.iloc[idx], self.storage_cfg, self.image_cfg,
                                                         self.pool))["logit"]
        if not len(local):
            return local
        reduce = tf.function(lambda v: self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, self.strategy.run(tf.identity, args=(v,)), axis=None))
        return np.asarray(reduce(tf.constant(local)))

    def inject_fault(self, epoch: int) -> None:
        """Tests: the last worker dies once, after this epoch's checkpoint is reported."""
        t = self.t
        if not t.fail_after_epoch or epoch != t.fail_after_epoch or self.rank != self.world - 1:
            return
        marker = storage.join(self.spec.storage_path, self.spec.run_name, FAULT_MARKER)
        if not storage.exists(marker, self.storage_cfg):
            storage.write_text(marker, "1", self.storage_cfg)
            os._exit(1)

    def close(self) -> None:
        self.pool.shutdown()
        self.prefetch.shutdown()


def _record(epoch: int, phase: Phase, loss: float | None, images: int, seconds: float, y_val: np.ndarray,
            logits: np.ndarray) -> dict[str, Any]:
    prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    ranking = metrics.ranking_metrics(y_val, prob) if len(y_val) else {}
    return {"epoch": epoch, "phase": phase.number, "loss": loss, "train_images": images, "seconds": round(seconds, 1),
            "images_per_second": round(images / max(seconds, 1e-9), 1), "val_auc": ranking.get("roc_auc"),
            "val_loss": ranking.get("log_loss"), "val_brier": ranking.get("brier")}


def _score(record: dict[str, Any], logits: np.ndarray) -> float:
    """What the best epoch is chosen by: validation AUC, else minus the validation loss. An epoch whose validation
    outputs are constant never wins: the noise of a network that scores every image alike ranks the images by
    chance, and was once kept as the best epoch (issue 25)."""
    if learned.constant(logits):
        return -math.inf
    return record["val_auc"] if record["val_auc"] is not None else -(record["val_loss"] or 0.0)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: restore, then for each phase and epoch train, validate, checkpoint, stop?"""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # per-epoch shard reads are instant
    w = Worker(config)
    saver = CheckpointSaver(w.rank)
    state, best_weights, optimizer_values, optimizer_phase = saver.restore(w.model)
    phases = schedule(w.t)
    y_val = w.val_rows["label"].to_numpy(int)
    fixed = w.spec.last_epoch
    patience = 0 if fixed is not None else w.t.early_stopping_patience
    position = next_position(state, phases, patience, fixed)
    while position is not None:
        index, epoch = position
        phase = phases[index]
        fresh = not state.epochs_in(phase)
        if fresh and best_weights is not None:
            w.model.set_weights(best_weights)  # a new phase starts from the best epoch so far, not the last
        w.start_phase(phase, None if fresh or optimizer_phase != phase.number else optimizer_values)
        for epoch in range(epoch, min(phase.last_epoch, fixed or phase.last_epoch) + 1):
            loss, images, seconds = w.train_epoch(epoch)
            logits = w.validate()
            record = _record(epoch, phase, loss, images, seconds, y_val, logits)
            score = _score(record, logits)
            improved = fixed is not None or state.best_score is None or score > state.best_score
            state.history.append(record)
            if improved:
                best_weights = w.model.get_weights()
                state.best_epoch, state.best_score = epoch, score
            saver.save(w.model, w.optimizer, state, phase, improved, record)
            if w.rank == 0 and w.spec.progress is not None:
                w.spec.progress.put({"event": "epoch", **record, "epochs_planned": fixed or phases[-1].last_epoch,
                                     "best_epoch": state.best_epoch})
            w.inject_fault(epoch)
            if stopped_early(state, phase, patience):
                break
        optimizer_values = None
        position = next_position(state, phases, patience, fixed)
    w.close()
