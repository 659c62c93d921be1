"""One Ray Train run, driver side: a ``TensorflowTrainer`` (``MultiWorkerMirroredStrategy``) over the worker loop of
:mod:`skinray.train.loop`, resumed from its checkpoints when they exist (same run name, same storage).

The prepared manifest's rows (URI + label) are Ray Data datasets; each worker reads all of them and takes its share
itself (:func:`skinray.train.schedule.epoch_share`). The driver prints one line per epoch (the workers send their
records through a queue), records where each worker ran, and after the run loads its best weights into the driver's
model. A failed run ends in one line.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import pandas as pd

from skinray import SkinrayError
from skinray.config import SkinrayConfig
from skinray.data.prepared import COLUMNS, class_weights
from skinray.io import single_put_fs, storage
from skinray.runtime import ensure_ray, quiet_env, verbose
from skinray.train.loop import CheckpointSaver, RunSpec, TrainState, train_loop_per_worker

log = logging.getLogger("skinray.train")


@dataclass(frozen=True)
class Setup:
    """What every Ray Train run of one training shares: the driver's model (each run's weights land in it), the
    run name the fold and final runs are named after, where checkpoints go, what the workers load."""

    model: Any
    name: str
    storage_path: str
    weights: str
    dx_classes: list[str]
    malignant_dx: list[bool] | None


def run(cfg: SkinrayConfig, tr: pd.DataFrame, va: pd.DataFrame, setup: Setup, name: str, label: str = "",
        last_epoch: int | None = None) -> tuple[TrainState, dict[int, Any]]:
    """One Ray Train run, resumed when its checkpoints exist; its best weights (with ``last_epoch``: its last)
    are left in ``setup.model``."""
    t = cfg.train
    spec = RunSpec(run_name=name, storage_path=setup.storage_path, weights=setup.weights,
                   class_weights=class_weights(tr["label"], t.class_weight),
                   steps_per_epoch=math.ceil(len(tr) // t.workers / t.batch_size), dx_classes=setup.dx_classes,
                   malignant_dx=setup.malignant_dx, last_epoch=last_epoch)
    result, workers = _fit(cfg, tr, va, spec, label)
    return CheckpointSaver.load_best(result.checkpoint, setup.model), workers


def weights_for_workers(weights: str, local: str | None, storage_path: str, name: str, cfg: SkinrayConfig) -> str:
    """What workers load. A weights file on the driver's disk is not on the other nodes' disks: with checkpoints on
    S3 it is copied next to them (content-addressed) and the workers read it from there."""
    if local in (None, "imagenet") or storage.is_s3(weights):
        return weights
    if not storage.is_s3(storage_path):
        return local  # one machine (or a shared file system): the absolute path works everywhere
    digest = storage.sha256_file(local)[:16]
    uri = storage.join(storage_path, name, "inputs", f"{digest}-{os.path.basename(local)}")
    if not storage.exists(uri, cfg.storage):
        with open(local, "rb") as f:
            storage.write_bytes(uri, f.read(), cfg.storage)
    return uri


class _Progress:
    """Drains the workers' queue on a driver thread: one console line per epoch, worker placement recorded."""

    def __init__(self, queue: Any, label: str = "") -> None:
        self.queue, self.workers, self.stop = queue, {}, threading.Event()
        self.prefix = f"{label}: " if label else ""
        self.thread = threading.Thread(target=self._run, name="train-progress", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set() or not self.queue.empty():
            try:
                event = self.queue.get(timeout=0.5)
            except Exception:  # queue.Empty, or the queue actor going away at shutdown
                continue
            if event.get("event") == "worker":
                self.workers[event["rank"]] = {k: event[k] for k in ("rank", "node_id", "gpus")}
            elif event.get("event") == "epoch":
                auc = event.get("val_auc")
                log.info("%sepoch %d/%d phase %d: loss %.4f, val AUC %s (%s img/s, %.0f s)", self.prefix,
                         event["epoch"], event["epochs_planned"], event["phase"], event.get("loss") or float("nan"),
                         "n/a" if auc is None else f"{auc:.4f}", event["images_per_second"], event["seconds"],
                         extra={"event": {"stage": "train", **event}})

    def __enter__(self) -> _Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _fit(cfg: SkinrayConfig, tr: pd.DataFrame, va: pd.DataFrame, spec: RunSpec,
         label: str = "") -> tuple[Any, dict[int, Any]]:
    """Launch the TensorflowTrainer; re-running with the same run name and storage resumes from its checkpoint."""
    ray = ensure_ray()
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer
    from ray.util.queue import Queue

    t = cfg.train
    fs, path = single_put_fs.filesystem_for_libraries(spec.storage_path, cfg.storage)
    queue = Queue(actor_options={"num_cpus": 0})
    loop_config = {"train": t.model_dump(), "spec": {**spec.__dict__, "progress": queue},
                   "storage": cfg.storage.model_dump(), "image": cfg.image.model_dump()}
    data_ctx = ray.data.DataContext.get_current()
    bars, data_ctx.enable_progress_bars = data_ctx.enable_progress_bars, False  # datasets carry this context
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(
            name=spec.run_name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": quiet_env(verbose())},
            logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
        ),
        datasets={"train": ray.data.from_pandas(tr[COLUMNS].reset_index(drop=True)),
                  "val": ray.data.from_pandas(va[COLUMNS].reset_index(drop=True))},
        dataset_config=DataConfig(datasets_to_split=[]),  # each worker takes its share itself (epoch_share)
    )
    try:
        with _Progress(queue, label) as progress:
            result = trainer.fit()
    except Exception as exc:
        raise _training_error(exc) from exc
    finally:
        data_ctx.enable_progress_bars = bars
    if result.checkpoint is None:
        raise SkinrayError("training finished without a checkpoint")
    return result, progress.workers


def _training_error(exc: BaseException) -> SkinrayError:
    """One line for a failed ``trainer.fit()``: a worker's own SkinrayError as it is, else where it failed and the
    innermost cause (Ray wraps worker and controller errors several levels deep)."""
    text = "\n".join(str(e) for e in _chain(exc))
    mine = next((line for line in text.splitlines() if "SkinrayError: " in line), None)
    if mine:
        return SkinrayError(mine.split("SkinrayError: ", 1)[1].strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first, last = (lines[0], lines[-1]) if lines else (type(exc).__name__, "")
    return SkinrayError(f"training failed: {first[:300]}" + (f" ... {last[:300]}" if last and last != first else ""))


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen
