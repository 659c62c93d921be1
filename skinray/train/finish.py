"""The export step: the trained network and its held-out scores → a verified model directory at ``train.out``
(each of its files is :mod:`skinray.model.artifact`'s: named, written and read there).

In order: ``model.keras``; ``model.onnx`` (logit outputs, with the out-of-distribution guard also the pooled
features), parity-checked against Keras; the held-out rows scored through that graph as scoring will score them
(the val split, judged before anything is written — or with ``train.folds`` the out-of-fold scores already made);
the operating point and the flip band fitted on those scores (:mod:`skinray.decision.operating_point`); the guard's
statistics (``ood.npz``), the validation profile drift is measured against (``reference.json``), the training
config (``config.yaml``); and ``skinray.json``, which describes and hashes them all, written last.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from skinray.config import SkinrayConfig, TrainConfig
from skinray.data import images
from skinray.data.prepared import decode_rows, dx_codes, source_counts
from skinray.decision import drift, operating_point, promises
from skinray.model import artifact, ood, views
from skinray.model.artifact import MODEL_FILE, ONNX_FILE, ModelMeta, Outputs, Preprocessing
from skinray.model.network import ARCHITECTURE_VERSION, DX_LOGITS, LOGIT, export_onnx, with_features
from skinray.model.ood import FEATURES, OodGuard
from skinray.runtime import versions
from skinray.train import created
from skinray.train.loop import VAL_BATCH, TrainState
from skinray.train.plan import Plan

log = logging.getLogger("skinray.train")


@dataclass(frozen=True)
class Trained:
    """What the runs leave for the model directory."""

    model: Any  # the network to export: the run's best weights (the final run's last), or the ensemble
    state: TrainState | None  # the exported run's history and best epoch; None for an ensemble (no run of its own)
    workers: dict[int, Any]  # where the exported run's workers ran, by rank
    seconds: float  # since the training started
    cv: dict[str, Any] | None = None  # with train.folds: the cross-validation summary
    z_held: np.ndarray | None = None  # with train.folds: the out-of-fold logits per view (else scored here)
    held_folds: np.ndarray | None = None  # with train.folds: each held-out row's fold


def write_model(p: Plan, trained: Trained, pool: ThreadPoolExecutor) -> tuple[str, ModelMeta]:
    """The model directory at ``train.out`` from ``trained``; returns (model id, its description)."""
    cfg, t = p.cfg, p.cfg.train
    with tempfile.TemporaryDirectory() as out_dir:
        trained.model.save(os.path.join(out_dir, MODEL_FILE))
        samples = decode_rows(p.held_rows.head(8), cfg.storage, cfg.image, pool)
        graph = with_features(trained.model) if t.ood_guard else trained.model
        names, parity = export_onnx(graph, os.path.join(out_dir, ONNX_FILE), cfg.image.size, samples=samples)
        artifact.check_parity(parity)
        z_held, held_features = _held_out_scores(p, trained, os.path.join(out_dir, ONNX_FILE), names, pool)
        op, held_report, band, logits_held = _operating_point(t, p.held_rows, z_held, trained.held_folds)
        guard = _fit_guard(out_dir, names, p.fit_rows, held_features, "the val split" if not t.folds else
                           "train+val (the final model's own training rows)", cfg, pool)
        artifact.write_reference(out_dir, _validation_profile(p.held_rows, op.apply(logits_held).prob, cfg, pool))
        artifact.write_config(out_dir, cfg)
        meta = _meta(p, trained, names, parity, op, held_report, band, guard)
        return artifact.write(out_dir, t.out, meta, cfg.storage)


def through_graph(engine_path: str, outputs: dict[str, str], rows: pd.DataFrame, cfg: SkinrayConfig,
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


def _held_out_scores(p: Plan, trained: Trained, onnx_path: str, names: dict[str, str], pool: ThreadPoolExecutor
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """The held-out logits per view the operating point is fitted on, and the held-out rows' features for the
    guard (None without it). Without ``train.folds`` the val split through the exported graph, judged first
    (:func:`skinray.train.created.require_learned`); with them the out-of-fold scores, judged already."""
    t = p.cfg.train
    z_held, held_features = trained.z_held, None
    if not t.folds or t.ood_guard:  # calibration and threshold are fitted on what scoring will produce
        log.info("scoring %s held-out images%s through the exported graph", f"{len(p.held_rows):,}",
                 " with flip TTA" if t.tta else "")
        z_graph, held_features = through_graph(onnx_path, names, p.held_rows, p.cfg, pool, t.tta)
        if not t.folds:
            z_held = z_graph
            created.require_learned(p.cfg, p.held_rows, z_held, f"the validation scores of its best epoch "
                                    f"({trained.state.best_epoch})", p.created, p.setup.storage_path)
    return z_held, held_features


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


def _fit_guard(out_dir: str, names: dict[str, str], fit_rows: pd.DataFrame, held_features: np.ndarray | None,
               held_name: str, cfg: SkinrayConfig, pool: ThreadPoolExecutor) -> OodGuard | None:
    """The out-of-distribution guard (:mod:`skinray.model.ood`): statistics of the training rows' features through the
    exported graph, the threshold from the held-out rows'; written to ``ood.npz``."""
    if held_features is None:
        return None
    log.info("fitting the out-of-distribution guard on %s training images", f"{len(fit_rows):,}")
    _, train_features = through_graph(os.path.join(out_dir, ONNX_FILE), names, fit_rows, cfg, pool, flips=False)
    stats, guard = ood.fit(train_features, fit_rows["label"].to_numpy(int), held_features, names[FEATURES],
                           held_name)
    artifact.write_guard(out_dir, stats)
    return guard


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


def _meta(p: Plan, trained: Trained, names: dict[str, str], parity: float, op: operating_point.OperatingPoint,
          held_report: dict[str, Any] | None, band: float | None, guard: OodGuard | None) -> ModelMeta:
    """``skinray.json`` before its file hashes: preprocessing, outputs, operating point, provenance."""
    cfg, t, init, state, workers = p.cfg, p.cfg.train, p.init, trained.state, trained.workers
    fit_rows, held_rows = p.fit_rows, p.held_rows
    return ModelMeta(
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        recipe=cfg.recipe,
        architecture=_architecture(t, p.setup.dx_classes, p.setup.malignant_dx, trained.cv),
        weights_source=(f"the base of skinray model {init['model_id']} ({init['model']})" if init
                        else p.weights_source),
        preprocessing=Preprocessing.from_config(cfg.image),
        outputs=Outputs(logit=names[LOGIT], dx_logits=names.get(DX_LOGITS), diagnoses=p.setup.dx_classes,
                        features=names.get(FEATURES)),
        ood=guard,
        calibration=op.calibration,
        threshold=op.threshold,
        tta=t.tta,
        tta_band=band,
        onnx={"parity_max_abs_diff": parity},
        training={"config": json.loads(cfg.model_dump_json(by_alias=True)), "run_name": p.setup.name,
                  "storage_path": p.setup.storage_path, "batch_size_per_worker": t.batch_size,
                  "global_batch_size": t.batch_size * t.workers, "seconds": round(trained.seconds, 1),
                  "best_epoch": state and state.best_epoch, "epochs_run": state and len(state.history),
                  "workers": [workers[r] for r in sorted(workers)], "cross_validation": trained.cv},
        data={"prepared": t.prepared, "fingerprint": p.fingerprint, "train_rows": int(len(fit_rows)),
              "trained_on_splits": ["train", "val"] if t.folds else ["train"],
              "val_rows": int(len(p.va)), "held_out_rows": int(len(held_rows)),
              "train_malignant": int(fit_rows["label"].sum()), "sources": source_counts(fit_rows, held_rows),
              **({"initialised_from": init} if init else {})},
        history=state.history if state else [],
        validation=held_report,
        versions=versions(),
    )


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
