"""``skinray calibrate``: a model's calibration and threshold refitted on a clinic's own labelled images.

The network is not touched: the new model directory holds the same graph files byte for byte, with a new
``skinray.json`` whose operating point is fitted on the clinic's images by the same policy, sensitivity target,
confidence and per-diagnosis floors as the original (``operating_point.fit``), and whose provenance names the images
and the model it came from. A set too small to promise the target is refused: with ``n`` malignant images all
caught, the one-sided exact lower bound on sensitivity is ``(1 - confidence) ** (1 / n)``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time

from skinray import SkinrayError
from skinray.clinic import labelled
from skinray.config import SkinrayConfig
from skinray.decision import operating_point
from skinray.decision.inputs import two_classes
from skinray.io import storage
from skinray.model.artifact import META_FILE, ModelArtifact, ModelMeta, write

log = logging.getLogger("skinray.calibrate")


def images_needed(target: float, confidence: float | None) -> int:
    """Malignant images (of a diagnosis) needed before a threshold can promise ``target`` at ``confidence``."""
    if confidence is None:
        return 1
    return math.ceil(math.log(1.0 - confidence) / math.log(target)) if target < 1 else 10**9


def _confidence(confidence: float | None) -> str:
    return f"at {confidence:.0%} confidence" if confidence is not None else "on these images"


def _check_size(scores: labelled.LabelledScores, art: ModelArtifact) -> None:
    thr = art.meta.threshold
    y, dx = scores.y, scores.dx
    if not two_classes(y):
        raise SkinrayError(f"{scores.manifest}: a threshold needs benign and malignant images; "
                           f"these {len(y)} scored images hold one class")
    if thr.policy == "sensitivity" and thr.target_sensitivity is not None:
        need = images_needed(thr.target_sensitivity, thr.confidence)
        if int(y.sum()) < need:
            raise SkinrayError(f"{scores.manifest}: {int(y.sum())} malignant images cannot promise sensitivity "
                               f"{thr.target_sensitivity} {_confidence(thr.confidence)}: at least {need} needed")
    for name, floor in (thr.diagnoses or {}).items():
        if floor.met is None:  # the model made no promise for it (no such images where it was fitted)
            continue
        have = int(((dx == name) & (y == 1)).sum())
        need = images_needed(floor.target, thr.confidence)
        if have < need:
            raise SkinrayError(f"{scores.manifest}: {have} malignant {name} images cannot promise its floor "
                               f"{floor.target} {_confidence(thr.confidence)}: at least {need} needed")


def calibrate(cfg: SkinrayConfig) -> ModelMeta:
    """Refit the operating point of ``calibrate.model`` on ``calibrate.labelled`` into ``calibrate.out``."""
    c = cfg.calibrate
    if not c.model or not c.out:
        raise SkinrayError("calibrate needs --model and --out")
    if storage.normalize(c.out).rstrip("/") == storage.normalize(c.model).rstrip("/"):
        raise SkinrayError("calibrate writes a new model directory: --out must differ from --model")
    if storage.exists(storage.join(c.out, META_FILE), cfg.storage):
        raise SkinrayError(f"{c.out} already holds a model: choose a new --out")
    art = ModelArtifact.open(c.model, cfg.storage)
    scores = labelled.score(cfg, art, c.labelled, c.images)
    _check_size(scores, art)
    thr, y = art.meta.threshold, scores.y
    op, report = operating_point.fit(y, scores.scored["raw_logit"].to_numpy(float), art.meta.calibration.method,
                                      thr.policy, thr.target_sensitivity, thr.confidence, scores.dx,
                                      {name: d.target for name, d in (thr.diagnoses or {}).items()
                                       if d.met is not None} or None)
    if op.threshold.target_met is False:
        raise SkinrayError(f"{c.labelled}: no threshold keeps sensitivity {thr.target_sensitivity} "
                           f"{_confidence(thr.confidence)} on these images")
    if report is not None:
        report["scores"] = f"a clinic's labelled images ({c.labelled})"
    provenance = {"labelled": c.labelled, "fingerprint": scores.fingerprint, "scored": int(len(y)),
                  "malignant": int(y.sum()), "not_scored": int(len(scores.not_scored)),
                  "out_of_distribution": int(len(scores.outside)),
                  "from_model": art.uri, "from_model_id": art.model_id,
                  "threshold_before": thr.threshold, "calibration_before": art.meta.calibration.model_dump(),
                  "validation_before": art.meta.validation,
                  "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    meta = art.meta.model_copy(update={"calibration": op.calibration, "threshold": op.threshold,
                                       "validation": report, "created_at": provenance["at"],
                                       "data": {**art.meta.data, "calibrated_on": provenance}})
    with tempfile.TemporaryDirectory() as tmp:
        for name in art.meta.files:  # the verified files, byte for byte
            shutil.copyfile(os.path.join(art.local_dir, name), os.path.join(tmp, name))
        model_id, meta = write(tmp, c.out, meta, cfg.storage)
    log.info("model %s written to %s: threshold %.3f → %.3f, refitted on %s images (%s malignant)", model_id, c.out,
             thr.threshold, op.threshold.threshold, f"{len(y):,}", f"{int(y.sum()):,}",
             extra={"event": {"model_id": model_id, "threshold": op.threshold.threshold, "n": int(len(y))}})
    return meta
