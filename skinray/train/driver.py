"""Distributed fine-tuning, driver side: prepared/ → Ray Train (``TensorflowTrainer`` +
``MultiWorkerMirroredStrategy``, the worker loop in :mod:`skinray.train.loop`) → a verified model directory.

The prepared manifest's rows (URI + label) are Ray Data datasets; each worker reads all of them and trains on its
share of a permutation keyed by seed and epoch (:func:`skinray.train.loop.epoch_share`): all workers run the same
number of steps, and the same seed trains the same network (the initial weights are seeded too). The driver prints one line per epoch (the workers
send their records through a queue), then exports the best epoch: ``model.keras``, ``model.onnx`` (logit outputs,
parity-checked) and ``skinray.json`` with the operating point fitted on validation (:mod:`skinray.decision.operating_point`).
With ``train.folds`` the operating point and the epoch count come from out-of-fold scores of every train+val image
instead (:mod:`skinray.train.cross_validation`), and the exported model is trained on all of train+val — or, with
``train.ensemble``, is the k fold models in one graph that averages their logits (no final training).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from skinray import DataError, SkinrayError
from skinray.config import SkinrayConfig, TrainConfig
from skinray.data import images
from skinray.data.prepare import data_fingerprint, load_prepared
from skinray.data.prepared import (
    COLUMNS,
    check_splits,
    class_weights,
    decode_rows,
    diagnosis_index,
    dx_codes,
    malignant_diagnoses,
    source_counts,
)
from skinray.decision import drift, operating_point, promises
from skinray.io import single_put_fs, storage
from skinray.model import artifact, ood, views
from skinray.model.artifact import MODEL_FILE, ONNX_FILE, REFERENCE_FILE, ModelMeta, Outputs, Preprocessing
from skinray.model.init_model import start_from
from skinray.model.network import (
    ARCHITECTURE_VERSION,
    DX_LOGITS,
    LOGIT,
    MEMBER_PREFIX,
    build_ensemble,
    build_model,
    export_onnx,
    resolve_weights,
    with_features,
)
from skinray.model.ood import FEATURES, OodGuard
from skinray.runtime import (
    EXPORT_MODULES,
    ensure_ray,
    quiet_env,
    quiet_ray_loggers,
    require_train_extra,
    verbose,
    versions,
)
from skinray.train import cross_validation, learned
from skinray.train.loop import CheckpointSaver, RunSpec, TrainState, train_loop_per_worker

log = logging.getLogger("skinray.train")
VAL_BATCH = 64


# Fitted after the last epoch from the validation scores: a re-run that changes only these resumes (no epochs
# left) and refits the operating point in about a minute instead of training again.
OPERATING_POINT_KEYS = {"threshold_policy", "target_sensitivity", "threshold_confidence", "diagnosis_sensitivity",
                        "calibration", "tta", "tta_near_threshold", "threshold_fold_spread"}
# What is exported from the runs, not how any run trains: an ensemble of the fold models uses the same fold runs
# as the cross-validated training without it, so switching it on after one trains nothing; whether a run that did
# not learn may be exported is judged on its held-out scores after the last epoch.
EXPORT_KEYS = {"ensemble", "ood_guard", "above_chance_confidence"}


# Settings added after run names were first derived: at their defaults they leave a run's name as it was, so a
# re-run of an earlier training still resumes from its checkpoints.
ADDED_SETTINGS = {"image": {"color_constancy": "none"},
                  "train": {"photometric_augment": False, "folds": 0, "init_model": None}}


def _at_default(cfg: SkinrayConfig, section: str) -> set[str]:
    return {k for k, default in ADDED_SETTINGS[section].items() if getattr(getattr(cfg, section), k) == default}


def run_name(cfg: SkinrayConfig, fingerprint: str) -> str:
    """Same data + same training settings → same name → a re-run resumes from its checkpoints."""
    t = cfg.train
    settings = cfg.image.model_dump_json(exclude=_at_default(cfg, "image")) + t.model_dump_json(
        exclude={"out", "run_name", "storage_path", "fail_after_epoch", "max_failures", "prepared",
                 *OPERATING_POINT_KEYS, *EXPORT_KEYS, *_at_default(cfg, "train")})
    digest = hashlib.sha256(f"{ARCHITECTURE_VERSION}|{settings}".encode()).hexdigest()
    return t.run_name or f"train-{fingerprint[:8]}-{digest[:8]}"


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


def _through_graph(engine_path: str, outputs: dict[str, str], rows: pd.DataFrame, cfg: SkinrayConfig,
                   pool: ThreadPoolExecutor, flips: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows through the exported graph: logits, one column per view (the three flips with ``flips``, else one), and
    the pooled features of the image itself (None without that output) — what scoring will produce, so the
    operating point and the guard are fitted on it."""
    from skinray.inference.engines import OnnxEngine

    engine = OnnxEngine(engine_path, outputs, threads=os.cpu_count() or 1, policy="batch")
    logits, features = [], []
    for i in range(0, len(rows), VAL_BATCH):
        x = decode_rows(rows.iloc[i:i + VAL_BATCH], cfg.storage, cfg.image, pool)
        out = views.all_views(engine, x) if flips else {k: v[:, None] for k, v in engine.run(x).items()}
        logits.append(out[LOGIT].reshape(len(x), -1))
        if FEATURES in out:
            features.append(out[FEATURES][:, 0])
    return np.concatenate(logits), (np.concatenate(features) if features else None)


def _fit_guard(out_dir: str, names: dict[str, str], fit_rows: pd.DataFrame, held_features: np.ndarray | None,
               held_name: str, cfg: SkinrayConfig, pool: ThreadPoolExecutor) -> OodGuard | None:
    """The out-of-distribution guard (:mod:`skinray.model.ood`): statistics of the training rows' features through the
    exported graph, the threshold from the held-out rows'; written to ``ood.npz``."""
    if held_features is None:
        return None
    log.info("fitting the out-of-distribution guard on %s training images", f"{len(fit_rows):,}")
    _, train_features = _through_graph(os.path.join(out_dir, ONNX_FILE), names, fit_rows, cfg, pool, flips=False)
    stats, guard = ood.fit(train_features, fit_rows["label"].to_numpy(int), held_features, names[FEATURES],
                           held_name)
    with open(os.path.join(out_dir, ood.FILE), "wb") as f:
        f.write(stats.to_bytes())
    return guard


def _weights_for_workers(weights: str, local: str | None, storage_path: str, name: str, cfg: SkinrayConfig) -> str:
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


def _validation_profile(va: pd.DataFrame, prob: np.ndarray, cfg: SkinrayConfig, pool: ThreadPoolExecutor
                        ) -> dict[str, Any]:
    """What scoring runs are compared with for drift: the validation split's calibrated scores, metadata and
    images (stored size, mean colour of the decoded pixels)."""
    def stats(uri: str) -> tuple[int, int, float, float, float]:
        arr, (w, h) = images.load_sized(uri, cfg.storage, cfg.image)
        r, g, b = images.mean_color(arr)
        return w, h, float(r), float(g), float(b)

    measured = list(pool.map(stats, va["image_uri"]))
    frame = va.reset_index(drop=True).assign(prob_malignant=prob)
    frame[["image_width", "image_height", "mean_red", "mean_green", "mean_blue"]] = pd.DataFrame(measured)
    return drift.profile(frame)


def diagnosis_target(tr: pd.DataFrame, dx_classes: list[str], cfg: SkinrayConfig) -> list[bool] | None:
    """With ``train.target: diagnosis``, which diagnoses are malignant; a one-line error when the data cannot
    support that target (checked before any worker starts)."""
    if cfg.train.target != "diagnosis":
        return None
    if not dx_classes:
        raise SkinrayError(f"{cfg.train.prepared}: train.target diagnosis needs a dx column with at least two "
                           "diagnoses in the train split; use train.target binary")
    flags = malignant_diagnoses(tr, dx_classes)
    if all(flags) or not any(flags):
        raise SkinrayError(f"train.target diagnosis needs benign and malignant diagnoses; the train split's are all "
                           f"{'malignant' if all(flags) else 'benign'} ({dx_classes})")
    return flags


def _architecture(t: TrainConfig, dx_classes: list[str], malignant_dx: list[bool] | None,
                  cv: dict[str, Any] | None = None) -> dict[str, Any]:
    """The network in words for ``skinray.json``: which head, which target, what the diagnosis output is for, and
    for an ensemble its members."""
    head = f"GAP → Dense({t.dense_units}, relu) → Dropout({t.dropout}) → "
    if malignant_dx is None:
        head += "Dense(1): logit"
        dx_head = ({"output": "dx_logits (one logit per diagnosis, from GAP)", "classes": dx_classes,
                    "loss_weight": t.aux_diagnosis_weight} if dx_classes else None)
    else:
        head += f"Dense({len(dx_classes)}): dx_logits → logit = logsumexp(malignant) - logsumexp(benign)"
        dx_head = {"output": "dx_logits (the target)", "classes": dx_classes,
                   "malignant": [c for c, m in zip(dx_classes, malignant_dx) if m]}
    return {"base": "MobileNetV2", "alpha": t.alpha, "include_top": False, "head": head, "target": t.target,
            "diagnosis_head": dx_head, "fine_tuned_top_layers": t.fine_tune_layers if t.fine_tune_epochs else 0,
            "input_scaling": "[0, 1]" if t.input_scaling == "unit" else "[-1, 1] (MobileNetV2)",
            "version": ARCHITECTURE_VERSION,
            "ensemble": {"members": t.folds, "combine": "mean of the members' logit (and dx_logits)",
                         "member_best_epochs": [f["best_epoch"] for f in cv["per_fold"]],
                         "members_trained_on": "train+val less one lesion-grouped fold each"}
            if t.ensemble and cv else None}


@dataclass(frozen=True)
class _Setup:
    """What every Ray Train run of one training shares: the driver's model (each run's weights land in it), the
    run name the fold and final runs are named after, where checkpoints go, what the workers load."""

    model: Any
    name: str
    storage_path: str
    weights: str
    dx_classes: list[str]
    malignant_dx: list[bool] | None


def _run(cfg: SkinrayConfig, tr: pd.DataFrame, va: pd.DataFrame, setup: _Setup, name: str, label: str = "",
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


def _restore_fold(cfg: SkinrayConfig, setup: _Setup, name: str, result: cross_validation.FoldResult) -> bool:
    """A finished fold's best weights into ``setup.model`` from its Ray Train run (read, no workers started);
    False when the run is gone or is not the one the fold's scores came from."""
    from ray.train import Result

    quiet_ray_loggers()  # "a run snapshot was found", four lines per fold
    fs, path = single_put_fs.filesystem_for_libraries(setup.storage_path, cfg.storage)
    try:
        restored = Result.from_path(f"{path.rstrip('/')}/{name}", storage_filesystem=fs)
        if restored.checkpoint is None:
            raise RuntimeError("no checkpoint")
        state = CheckpointSaver.load_best(restored.checkpoint, setup.model)
    except Exception as exc:  # a missing run folder, a damaged checkpoint: the fold is run again
        log.warning("fold %d/%d: its model cannot be read back from %s (%s): running the fold again",
                    result.fold + 1, result.folds, name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False
    if state.best_epoch != result.best_epoch:
        log.warning("fold %d/%d: the run %s kept epoch %s, its scores are epoch %d's: running the fold again",
                    result.fold + 1, result.folds, name, state.best_epoch, result.best_epoch)
        return False
    return True


def _member(cfg: SkinrayConfig, setup: _Setup, n: int) -> Any:
    """A copy of the fold model now in ``setup.model``, named as ensemble member ``n``."""
    t = cfg.train
    member = build_model(cfg.image.size, t.alpha, None, t.dense_units, t.dropout, freeze_base=True,
                         input_scaling=t.input_scaling, dx_classes=len(setup.dx_classes),
                         malignant_dx=setup.malignant_dx, name=f"{MEMBER_PREFIX}{n}")
    member.set_weights(setup.model.get_weights())
    return member


def _cross_validate(cfg: SkinrayConfig, rows: pd.DataFrame, setup: _Setup, pool: ThreadPoolExecutor,
                    members: list[Any] | None = None) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """``train.folds`` fold runs over ``rows`` → every row's out-of-fold logits (rows × views), the summary with
    the epoch count they chose, and each row's fold. A fold finished earlier is read back, not run again. With
    ``members`` (a list) each fold model is appended to it, for the ensemble."""
    t = cfg.train
    assignment = cross_validation.assign_folds(rows, t.folds, t.seed)
    run_dir = storage.join(setup.storage_path, setup.name)
    results = []
    for fold in range(t.folds):
        held, label = rows[assignment == fold], f"fold {fold + 1}/{t.folds}"
        ids = held["isic_id"].astype(str).tolist()
        fold_name = f"{setup.name}-fold{fold + 1}of{t.folds}"
        result = cross_validation.load_fold(run_dir, fold, t.folds, ids, 3 if t.tta else 1, cfg.storage)
        if result is not None and members is not None and not _restore_fold(cfg, setup, fold_name, result):
            result = None
        if result is None:
            kept = rows[assignment != fold]
            log.info("%s: training on %s images (%s malignant), scoring %s held out", label, f"{len(kept):,}",
                     f"{int(kept['label'].sum()):,}", f"{len(held):,}")
            state, _ = _run(cfg, kept, held, setup, fold_name, label)
            with tempfile.TemporaryDirectory() as d:
                names, parity = export_onnx(setup.model, os.path.join(d, ONNX_FILE), cfg.image.size)
                artifact.check_parity(parity)  # the held-out scores come from this graph
                z, _ = _through_graph(os.path.join(d, ONNX_FILE), names, held, cfg, pool, t.tta)
            result = cross_validation.FoldResult(fold, t.folds, ids, z, int(state.best_epoch or 0), state.history)
            cross_validation.save_fold(run_dir, result, cfg.storage)
        if members is not None:
            members.append(_member(cfg, setup, fold + 1))
        log.info("%s: best epoch %d, held-out AUC %s", label, result.best_epoch,
                 "n/a" if result.best_auc is None else f"{result.best_auc:.4f}")
        results.append(result)
    epochs, curve = cross_validation.choose_epochs(results)
    return (cross_validation.out_of_fold(assignment, results),
            cross_validation.summary(assignment, rows["label"].to_numpy(int), results, epochs, curve), assignment)


def _operating_point(t: TrainConfig, held_rows: pd.DataFrame, z_held: np.ndarray, held_folds: np.ndarray | None
                     ) -> tuple[operating_point.OperatingPoint, dict[str, Any] | None, float | None, np.ndarray]:
    """Calibration, threshold and flip band from the held-out logits per view (what scoring will produce), the
    held-out report with its figures per source, and the combined held-out logits."""
    y_held = held_rows["label"].to_numpy(int)
    logits_held = z_held.mean(axis=1)
    op, held_report = operating_point.fit(y_held, logits_held, t.calibration, t.threshold_policy,
                                          t.target_sensitivity, t.threshold_confidence,
                                          dx_codes(held_rows).fillna("").to_numpy(object),
                                          t.diagnosis_sensitivity,
                                          held_folds if t.threshold_fold_spread else None)
    band = views.fit_band(z_held) if t.tta and t.tta_near_threshold else None
    if band is not None:
        logits_held = views.combine(z_held, views.for_model(True, band, op))  # what scoring will produce
        if held_report is not None:
            held_report["views"] = views.check(y_held, z_held, op, band)
    if held_report is not None:  # the model card's figures per source, on the held-out rows
        held_report["sources"] = promises.by_source(
            held_rows.assign(prob_malignant=op.apply(logits_held).prob), op.threshold.threshold, 200)
        held_report["scores"] = (f"out-of-fold scores ({t.folds} lesion-grouped folds over train+val)" if t.folds
                                 else "the val split")
        if t.ensemble:  # the members' own held-out scores: each is one member's, the ensemble averages all
            held_report["scores"] += ", one member each; the ensemble averages all members"
    return op, held_report, band, logits_held


def _run_names(name: str, t: TrainConfig) -> list[str]:
    """Every Ray Train run (and the fold results folder) one training keeps under its storage path."""
    if not t.folds:
        return [name]
    return [name, *(f"{name}-fold{f + 1}of{t.folds}" for f in range(t.folds)), f"{name}-final"]


def _absent(cfg: SkinrayConfig, storage_path: str, name: str) -> list[str]:
    """What this training may create that does not exist yet, innermost first: its runs' checkpoint folders, the
    checkpoint root, ``--out``. A training that writes no model removes them again (:func:`_discard`)."""
    uris = [storage.join(storage_path, run) for run in _run_names(name, cfg.train)] + [storage_path, cfg.train.out]
    return [uri for uri in uris if not storage.exists(uri, cfg.storage)]


def _empty(uri: str, cfg: SkinrayConfig) -> bool:
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri, cfg.storage)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return not any(info.type == pafs.FileType.File for info in infos)


def _discard(created: list[str], storage_path: str, cfg: SkinrayConfig) -> None:
    """Remove what this training created (``_absent``'s list): its own runs' folders, then the checkpoint root and
    ``--out`` where nothing else landed in them meanwhile. Whatever existed before is left as it was."""
    for uri in created:
        own_run = uri not in (storage_path, cfg.train.out)
        if own_run or _empty(uri, cfg):
            storage.delete(uri, cfg.storage)


def _require_learned(cfg: SkinrayConfig, held_rows: pd.DataFrame, z_held: np.ndarray, scores: str,
                     created: list[str], storage_path: str) -> None:
    """No model from a network that did not learn (:mod:`skinray.train.learned`): constant or non-finite held-out outputs,
    or a held-out ROC-AUC not above chance at ``train.above_chance_confidence``. Stops with one line (exit 3) after
    removing what this training created, so ``--out`` is as it was."""
    t = cfg.train
    verdict = learned.judge(held_rows["label"].to_numpy(int), z_held, t.above_chance_confidence or None, t.seed)
    if not verdict.dead:
        log.debug("%s: %s", scores, verdict.describe())
        return
    _discard(created, storage_path, cfg)
    few = (f"; {verdict.n:,} held-out images may be too few to tell (a larger prepare.val_fraction, or --folds K "
           "to judge on every train+val image)" if verdict.ci is not None else "")
    raise DataError(f"the trained network did not learn, no model written to {t.out}: on {scores} {verdict.problem}. "
                    f"Try another train.seed or a lower train.learning_rate (now {t.learning_rate:g}), more epochs "
                    f"or images{few}")


def selection(meta: ModelMeta) -> str:
    """How the exported weights were chosen, in words: the last line of ``train`` and of ``skinray train``."""
    cv, best = meta.training.get("cross_validation"), meta.training.get("best_epoch")
    if meta.architecture.get("ensemble"):
        return f"an ensemble of {cv['folds']} fold models"
    return f"{best} epochs chosen by {cv['folds']} folds" if cv else f"best epoch {best}"


def train(cfg: SkinrayConfig) -> ModelMeta:
    """prepared/ → model directory (model.keras, model.onnx, config.yaml, skinray.json); returns its description.

    The operating point (calibration, threshold, flip band) is fitted on held-out scores: the val split's, or with
    ``train.folds`` every train+val image's out-of-fold scores, the final model then trained on all of train+val.
    """
    if not cfg.train.prepared or not cfg.train.out:
        raise SkinrayError("train needs --prepared and --out")
    require_train_extra("training", EXPORT_MODULES)  # before any Ray work: the base install only scores
    started = time.time()
    init = None
    if cfg.train.init_model:
        cfg, init = start_from(cfg)
    t = cfg.train
    tr, va = check_splits(load_prepared(t.prepared, cfg.storage), cfg)
    weights_arg, weights_source = resolve_weights(t.weights, cfg.storage)
    # what the exported model trains on, and the rows its operating point is fitted on (never the same model's)
    fit_rows, held_rows = (pd.concat([tr, va], ignore_index=True),) * 2 if t.folds else (tr, va)
    dx_classes, fit_rows, held_rows = diagnosis_index(fit_rows, held_rows,
                                                      t.aux_diagnosis_weight if t.target == "binary" else 1.0)
    malignant_dx = diagnosis_target(fit_rows, dx_classes, cfg)
    model = build_model(cfg.image.size, t.alpha, weights_arg, t.dense_units, t.dropout,  # fails fast on bad weights
                        input_scaling=t.input_scaling, dx_classes=len(dx_classes), malignant_dx=malignant_dx)
    fingerprint = data_fingerprint(t.prepared, cfg.storage)
    name = run_name(cfg, fingerprint)
    storage_path = storage.normalize(t.storage_path or storage.join(t.out, "_ray"))
    if t.folds:
        log.info("cross-validating on %s train+val images (%s malignant) in %d lesion-grouped folds, then %s; "
                 "%d worker(s), run %s", f"{len(fit_rows):,}", f"{int(fit_rows['label'].sum()):,}", t.folds,
                 "exporting the fold models as one ensemble" if t.ensemble else "training on all of them",
                 t.workers, name)
    else:
        log.info("training on %s images (%s malignant), validating on %s; %d worker(s), run %s%s", f"{len(tr):,}",
                 f"{int(tr['label'].sum()):,}", f"{len(va):,}", t.workers, name,
                 f"; diagnosis output over {dx_classes}" if dx_classes else "")
    created = _absent(cfg, storage_path, name)
    setup = _Setup(model, name, storage_path, _weights_for_workers(t.weights, weights_arg, storage_path, name, cfg),
                   dx_classes, malignant_dx)

    with tempfile.TemporaryDirectory() as out_dir, ThreadPoolExecutor(4) as pool:
        cv, state, workers, held_folds = None, None, {}, None
        members: list[Any] | None = [] if t.ensemble else None
        if t.folds:
            z_held, cv, held_folds = _cross_validate(cfg, held_rows, setup, pool, members)
            _require_learned(cfg, held_rows, z_held, f"the out-of-fold scores of {t.folds} folds", created,
                             storage_path)
        if members is not None:
            log.info("exporting the %d fold models as one ensemble (the mean of their logits)", t.folds)
            model = build_ensemble(members)
        elif t.folds:
            log.info("the folds chose %d epochs; the final model trains (or resumes) on all %s train+val images",
                     cv["epochs"], f"{len(fit_rows):,}")
            # (its workers skip validation: every held-out row is in its training data)
            state, workers = _run(cfg, fit_rows, held_rows, setup, f"{name}-final", "final", last_epoch=cv["epochs"])
        else:
            state, workers = _run(cfg, fit_rows, held_rows, setup, name)
        train_seconds = time.time() - started
        model.save(os.path.join(out_dir, MODEL_FILE))
        samples = decode_rows(held_rows.head(8), cfg.storage, cfg.image, pool)
        graph = with_features(model) if t.ood_guard else model
        names, parity = export_onnx(graph, os.path.join(out_dir, ONNX_FILE), cfg.image.size, samples=samples)
        artifact.check_parity(parity)
        held_features = None
        if not t.folds or t.ood_guard:  # calibration and threshold are fitted on what scoring will produce
            log.info("scoring %s held-out images%s through the exported graph", f"{len(held_rows):,}",
                     " with flip TTA" if t.tta else "")
            z_graph, held_features = _through_graph(os.path.join(out_dir, ONNX_FILE), names, held_rows, cfg, pool,
                                                    t.tta)
            if not t.folds:
                z_held = z_graph
                _require_learned(cfg, held_rows, z_held, f"the validation scores of its best epoch "
                                 f"({state.best_epoch})", created, storage_path)
        op, held_report, band, logits_held = _operating_point(t, held_rows, z_held, held_folds)
        guard = _fit_guard(out_dir, names, fit_rows, held_features, "the val split" if not t.folds else
                           "train+val (the final model's own training rows)", cfg, pool)
        storage.write_json(os.path.join(out_dir, REFERENCE_FILE),
                           _validation_profile(held_rows, op.apply(logits_held).prob, cfg, pool))
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            f.write(cfg.to_yaml())
        meta = ModelMeta(
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            recipe=cfg.recipe,
            architecture=_architecture(t, dx_classes, malignant_dx, cv),
            weights_source=(f"the base of skinray model {init['model_id']} ({init['model']})" if init
                            else weights_source),
            preprocessing=Preprocessing.from_config(cfg.image),
            outputs=Outputs(logit=names[LOGIT], dx_logits=names.get(DX_LOGITS), diagnoses=dx_classes,
                            features=names.get(FEATURES)),
            ood=guard,
            calibration=op.calibration,
            threshold=op.threshold,
            tta=t.tta,
            tta_band=band,
            onnx={"parity_max_abs_diff": parity},
            training={"config": json.loads(cfg.model_dump_json(by_alias=True)), "run_name": name,
                      "storage_path": storage_path, "batch_size_per_worker": t.batch_size,
                      "global_batch_size": t.batch_size * t.workers, "seconds": round(train_seconds, 1),
                      "best_epoch": state and state.best_epoch, "epochs_run": state and len(state.history),
                      "workers": [workers[r] for r in sorted(workers)], "cross_validation": cv},
            data={"prepared": t.prepared, "fingerprint": fingerprint, "train_rows": int(len(fit_rows)),
                  "trained_on_splits": ["train", "val"] if t.folds else ["train"],
                  "val_rows": int(len(va)), "held_out_rows": int(len(held_rows)),
                  "train_malignant": int(fit_rows["label"].sum()), "sources": source_counts(fit_rows, held_rows),
                  **({"initialised_from": init} if init else {})},
            history=state.history if state else [],
            validation=held_report,
            versions=versions(),
        )
        model_id, meta = artifact.write(out_dir, t.out, meta, cfg.storage)
    flips = (held_report or {}).get("views")
    log.info("model %s written to %s (%s, threshold %.3f, ONNX parity %.1e%s)", model_id, t.out, selection(meta),
             op.threshold.threshold, parity,
             f"; flips near the threshold: {flips['views_per_image']:.2f} views per held-out image" if flips else "")
    return meta
