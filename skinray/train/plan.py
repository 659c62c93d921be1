"""What one training is, decided before any Ray Train run starts: the config (after ``--init-model``), the splits,
the rows the exported model trains on and the rows its operating point is fitted on (never the same model's), the
diagnosis output, the run name a re-run resumes by, where checkpoints go and what this training may create.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from skinray import SkinrayError
from skinray.config import SkinrayConfig
from skinray.data.prepare import data_fingerprint, load_prepared
from skinray.data.prepared import check_splits, diagnosis_index, malignant_diagnoses
from skinray.io import storage
from skinray.model.init_model import start_from
from skinray.model.network import ARCHITECTURE_VERSION, build_model, resolve_weights
from skinray.train import created
from skinray.train.runs import Setup, weights_for_workers

log = logging.getLogger("skinray.train")


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


@dataclass(frozen=True)
class Plan:
    """One training's decisions, shared by its runs (:mod:`skinray.train.runs`) and its export step
    (:mod:`skinray.train.finish`)."""

    cfg: SkinrayConfig  # as trained: with --init-model, that model's preprocessing, width and base adopted
    init: dict[str, Any] | None  # --init-model's provenance
    weights_source: str
    fingerprint: str  # of the prepared data
    va: pd.DataFrame  # the val split
    fit_rows: pd.DataFrame  # what the exported model trains on: train, or with train.folds train+val
    held_rows: pd.DataFrame  # what its operating point is fitted on: val, or with train.folds train+val out of fold
    setup: Setup  # the driver's model, the run name, where checkpoints go, what the workers load, the dx output
    created: list[str]  # what this training may create that does not exist yet (removed if it writes no model)


def decide(cfg: SkinrayConfig) -> Plan:
    """``cfg`` → the training's plan, checked before any worker starts (bad weights, a target the data cannot
    support); one console line says what will train."""
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
    _announce(cfg, tr, va, fit_rows, dx_classes, name)
    absent = created.absent(cfg, storage_path, name)
    setup = Setup(model, name, storage_path, weights_for_workers(t.weights, weights_arg, storage_path, name, cfg),
                  dx_classes, malignant_dx)
    return Plan(cfg, init, weights_source, fingerprint, va, fit_rows, held_rows, setup, absent)


def _announce(cfg: SkinrayConfig, tr: pd.DataFrame, va: pd.DataFrame, fit_rows: pd.DataFrame,
              dx_classes: list[str], name: str) -> None:
    t = cfg.train
    if t.folds:
        log.info("cross-validating on %s train+val images (%s malignant) in %d lesion-grouped folds, then %s; "
                 "%d worker(s), run %s", f"{len(fit_rows):,}", f"{int(fit_rows['label'].sum()):,}", t.folds,
                 "exporting the fold models as one ensemble" if t.ensemble else "training on all of them",
                 t.workers, name)
    else:
        log.info("training on %s images (%s malignant), validating on %s; %d worker(s), run %s%s", f"{len(tr):,}",
                 f"{int(tr['label'].sum()):,}", f"{len(va):,}", t.workers, name,
                 f"; diagnosis output over {dx_classes}" if dx_classes else "")
