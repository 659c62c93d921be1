"""Distributed fine-tuning, driver side: prepared/ → Ray Train → a verified model directory.

:func:`train` reads as its steps, each a module of this room:

    plan.py         what the training is: config, splits, rows, run name, the model to train, what it may create
    runs.py         one Ray Train run (``TensorflowTrainer``, the worker loop in loop.py), resumed from its
                    checkpoints; one console line per epoch
    fold_runs.py    with ``train.folds``: the fold runs and their out-of-fold scores (cross_validation.py owns the
                    folds and the epoch count they choose)
    created.py      a network that did not learn writes no model, and what its training created is removed
    finish.py       the export step: the best weights and the held-out scores → the model directory

Without ``train.folds`` the exported model is the best epoch of one run on the train split, its operating point
fitted on the val split's scores through the exported graph (:mod:`skinray.decision.operating_point`). With
``train.folds`` the operating point and the epoch count come from out-of-fold scores of every train+val image
instead (:mod:`skinray.train.cross_validation`), and the exported model is trained on all of train+val — or, with
``train.ensemble``, is the k fold models in one graph that averages their logits (no final training).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from skinray import SkinrayError
from skinray.config import SkinrayConfig
from skinray.model.artifact import ModelMeta
from skinray.model.network import build_ensemble
from skinray.runtime import EXPORT_MODULES, require_train_extra
from skinray.train import created, finish, fold_runs, plan, runs
from skinray.train.finish import Trained
from skinray.train.fold_runs import OutOfFold
from skinray.train.plan import Plan

log = logging.getLogger("skinray.train")


def train(cfg: SkinrayConfig) -> ModelMeta:
    """prepared/ → model directory (model.keras, model.onnx, config.yaml, skinray.json); returns its description.

    The operating point (calibration, threshold, flip band) is fitted on held-out scores: the val split's, or with
    ``train.folds`` every train+val image's out-of-fold scores, the final model then trained on all of train+val.
    """
    if not cfg.train.prepared or not cfg.train.out:
        raise SkinrayError("train needs --prepared and --out")
    require_train_extra("training", EXPORT_MODULES)  # before any Ray work: the base install only scores
    started = time.time()
    p = plan.decide(cfg)
    with ThreadPoolExecutor(4) as pool:
        oof = _cross_validate(p, pool) if p.cfg.train.folds else None
        trained = _exported_network(p, oof, started)
        model_id, meta = finish.write_model(p, trained, pool)
    _written(model_id, p.cfg.train.out, meta)
    return meta


def _cross_validate(p: Plan, pool: ThreadPoolExecutor) -> OutOfFold:
    """The fold runs' out-of-fold scores, judged before anything more is trained (a network that did not learn
    ends the training here)."""
    t = p.cfg.train
    oof = fold_runs.cross_validate(p.cfg, p.held_rows, p.setup, pool)
    created.require_learned(p.cfg, p.held_rows, oof.z, f"the out-of-fold scores of {t.folds} folds", p.created,
                            p.setup.storage_path)
    return oof


def _exported_network(p: Plan, oof: OutOfFold | None, started: float) -> Trained:
    """The network the model directory will hold: with ``train.ensemble`` the fold models as one graph (no run of
    its own); with ``train.folds`` the final run on all of train+val for the epochs the folds chose (its last);
    else the best epoch of the one run."""
    t, setup = p.cfg.train, p.setup
    state, workers, model = None, {}, setup.model
    if oof is not None and oof.members is not None:
        log.info("exporting the %d fold models as one ensemble (the mean of their logits)", t.folds)
        model = build_ensemble(oof.members)
    elif oof is not None:
        log.info("the folds chose %d epochs; the final model trains (or resumes) on all %s train+val images",
                 oof.summary["epochs"], f"{len(p.fit_rows):,}")
        # (its workers skip validation: every held-out row is in its training data)
        state, workers = runs.run(p.cfg, p.fit_rows, p.held_rows, setup, f"{setup.name}-final", "final",
                                  last_epoch=oof.summary["epochs"])
    else:
        state, workers = runs.run(p.cfg, p.fit_rows, p.held_rows, setup, setup.name)
    if oof is None:
        return Trained(model, state, workers, time.time() - started)
    return Trained(model, state, workers, time.time() - started, oof.summary, oof.z, oof.folds)


def _written(model_id: str, out: str, meta: ModelMeta) -> None:
    """The last console line: where the model is, how its weights were chosen, its threshold and ONNX parity."""
    flips = (meta.validation or {}).get("views")
    log.info("model %s written to %s (%s, threshold %.3f, ONNX parity %.1e%s)", model_id, out, selection(meta),
             meta.threshold.threshold, meta.onnx.parity_max_abs_diff,
             f"; flips near the threshold: {flips['views_per_image']:.2f} views per held-out image" if flips else "")


def selection(meta: ModelMeta) -> str:
    """How the exported weights were chosen, in words: the last line of ``train`` and of ``skinray train``."""
    cv, best = meta.training.get("cross_validation"), meta.training.get("best_epoch")
    if meta.architecture.get("ensemble"):
        return f"an ensemble of {cv['folds']} fold models"
    return f"{best} epochs chosen by {cv['folds']} folds" if cv else f"best epoch {best}"
