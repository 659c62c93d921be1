"""The cross-validated path's Ray Train runs (``train.folds``): one run per lesion-grouped fold, each fold's held-out
rows scored through its exported graph as scoring would score them; a fold finished earlier is read back instead of
run again, and with ``train.ensemble`` each fold model is kept as a member of the exported ensemble.

The folds themselves, the per-fold result files and the choice of epoch count are
:mod:`skinray.train.cross_validation`'s.
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from skinray.config import SkinrayConfig
from skinray.io import single_put_fs, storage
from skinray.model import artifact
from skinray.model.artifact import ONNX_FILE
from skinray.model.network import MEMBER_PREFIX, build_model, export_onnx
from skinray.runtime import quiet_ray_loggers
from skinray.train import cross_validation, runs
from skinray.train.finish import through_graph
from skinray.train.loop import CheckpointSaver
from skinray.train.runs import Setup

log = logging.getLogger("skinray.train")


@dataclass(frozen=True)
class OutOfFold:
    """What the fold runs give the final model and the export step."""

    z: np.ndarray  # every row's out-of-fold logits, rows × views
    summary: dict[str, Any]  # skinray.json training.cross_validation: the epoch count chosen, per-fold figures
    folds: np.ndarray  # each row's fold
    members: list[Any] | None  # with train.ensemble: the fold models, named as ensemble members


def cross_validate(cfg: SkinrayConfig, rows: pd.DataFrame, setup: Setup, pool: ThreadPoolExecutor) -> OutOfFold:
    """``train.folds`` fold runs over ``rows`` → every row's out-of-fold logits (rows × views), the summary with
    the epoch count they chose, and each row's fold. A fold finished earlier is read back, not run again. With
    ``train.ensemble`` each fold model is kept, for the ensemble."""
    t = cfg.train
    members: list[Any] | None = [] if t.ensemble else None
    assignment = cross_validation.assign_folds(rows, t.folds, t.seed)
    run_dir = storage.join(setup.storage_path, setup.name)
    results = []
    for fold in range(t.folds):
        held, label = rows[assignment == fold], f"fold {fold + 1}/{t.folds}"
        ids = held["isic_id"].astype(str).tolist()
        fold_name = f"{setup.name}-fold{fold + 1}of{t.folds}"
        result = cross_validation.load_fold(run_dir, fold, t.folds, ids, 3 if t.tta else 1, cfg.storage)
        if result is not None and members is not None and not restore_fold(cfg, setup, fold_name, result):
            result = None
        if result is None:
            kept = rows[assignment != fold]
            log.info("%s: training on %s images (%s malignant), scoring %s held out", label, f"{len(kept):,}",
                     f"{int(kept['label'].sum()):,}", f"{len(held):,}")
            state, _ = runs.run(cfg, kept, held, setup, fold_name, label)
            with tempfile.TemporaryDirectory() as d:
                names, parity = export_onnx(setup.model, os.path.join(d, ONNX_FILE), cfg.image.size)
                artifact.check_parity(parity)  # the held-out scores come from this graph
                z, _ = through_graph(os.path.join(d, ONNX_FILE), names, held, cfg, pool, t.tta)
            result = cross_validation.FoldResult(fold, t.folds, ids, z, int(state.best_epoch or 0), state.history)
            cross_validation.save_fold(run_dir, result, cfg.storage)
        if members is not None:
            members.append(_member(cfg, setup, fold + 1))
        log.info("%s: best epoch %d, held-out AUC %s", label, result.best_epoch,
                 "n/a" if result.best_auc is None else f"{result.best_auc:.4f}")
        results.append(result)
    epochs, curve = cross_validation.choose_epochs(results)
    return OutOfFold(cross_validation.out_of_fold(assignment, results),
                     cross_validation.summary(assignment, rows["label"].to_numpy(int), results, epochs, curve),
                     assignment, members)


def restore_fold(cfg: SkinrayConfig, setup: Setup, name: str, result: cross_validation.FoldResult) -> bool:
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


def _member(cfg: SkinrayConfig, setup: Setup, n: int) -> Any:
    """A copy of the fold model now in ``setup.model``, named as ensemble member ``n``."""
    t = cfg.train
    member = build_model(cfg.image.size, t.alpha, None, t.dense_units, t.dropout, freeze_base=True,
                         input_scaling=t.input_scaling, dx_classes=len(setup.dx_classes),
                         malignant_dx=setup.malignant_dx, name=f"{MEMBER_PREFIX}{n}")
    member.set_weights(setup.model.get_weights())
    return member
