"""``skinray validate``: does a model keep its promises on a clinic's own labelled images?

Each promise of the model directory (:func:`skinray.decision.promises.promised`: sensitivity and the melanoma floor at the
stored threshold, specificity, ROC-AUC, calibration) is measured on the images with its interval and marked held,
not held or inconclusive; one line says what that means. ``validation.json`` and ``validation.md`` go to ``out``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from skinray import SkinrayError
from skinray.clinic import labelled
from skinray.config import SkinrayConfig
from skinray.decision import promises
from skinray.io import storage
from skinray.model.artifact import ModelArtifact

log = logging.getLogger("skinray.validate")
RECORD_FILE = "validation.json"
PAGE_FILE = "validation.md"


@dataclass(frozen=True)
class Validation:
    checked: list[promises.Promise]
    verdict: str
    record: dict[str, Any]  # validation.json

    @property
    def failed(self) -> bool:
        return any(p.status == "not held" for p in self.checked)


def _markdown(record: dict[str, Any], checked: list[promises.Promise]) -> str:
    lines = [f"# Validation of model {record['model_id']} on {record['labelled']}", "",
             f"{record['scored']} images scored ({record['malignant']} malignant, {record['melanoma']} melanoma); "
             f"{record['not_scored']} not scored {record['not_scored_by_reason']}; "
             f"{record['out_of_distribution']} set apart as not like the training images (no call is made on them, "
             "so none is judged here). Threshold "
             f"{record['threshold']:.3f}.", "", f"**{record['verdict']}**", "",
             "| promise | promised | measured [95% CI] | status |", "| --- | --- | --- | --- |"]
    for p in checked:
        shown = "n/a" if p.measured is None else f"{p.measured:.3f}"
        ci = f" [{p.ci95[0]:.3f}, {p.ci95[1]:.3f}]" if p.ci95 else ""
        lines.append(f"| {p.name} | {p.direction} {p.promised:.3f} ({p.source}) | {shown}{ci} | {p.status} |")
    lines += ["", "Held: the measured value meets the promise. Not held: the whole 95% interval misses it. "
              "Inconclusive: the value misses it, but too few images to say the promise fails. ECE depends on how "
              "common malignancy is among these images: on an enriched set it does not carry over to practice."]
    return "\n".join(lines) + "\n"


def validate(cfg: SkinrayConfig) -> Validation:
    """Score the labelled images, measure every promise, write the record (with ``out``) and return it."""
    v = cfg.validate_
    if not v.model:
        raise SkinrayError("validate needs --model")
    started = time.time()
    art = ModelArtifact.open(v.model, cfg.storage)
    scores = labelled.score(cfg, art, v.labelled, v.images)
    if scores.scored.empty:
        raise SkinrayError(f"none of the images of {v.labelled} could be scored")
    rows = scores.scored
    fig = promises.figures(scores.y, rows["prob_malignant"].to_numpy(float), art.threshold, scores.dx,
                           cfg.metrics.bootstrap)
    checked = [p.measure(fig) for p in promises.promised(art.meta)]
    verdict = promises.verdict(checked)
    record = {"model": art.uri, "model_id": art.model_id, "labelled": v.labelled, "fingerprint": scores.fingerprint,
              "scored": fig["n"], "malignant": fig["n_pos"], "melanoma": fig["n_melanoma"],
              "not_scored": int(len(scores.not_scored)), "out_of_distribution": int(len(scores.outside)),
              "not_scored_by_reason": {str(k): int(n) for k, n in scores.not_scored["reason"].value_counts().items()},
              "threshold": art.threshold, "figures": fig, "promises": [p.record() for p in checked],
              "verdict": verdict, "held": not any(p.status == "not held" for p in checked),
              "sources": promises.by_source(rows, art.threshold, cfg.metrics.bootstrap)
              if rows["source"].nunique() > 1 else {},
              "seconds": round(time.time() - started, 1)}
    if v.out:
        storage.write_json(storage.join(v.out, RECORD_FILE), record, cfg.storage)
        storage.write_text(storage.join(v.out, PAGE_FILE), _markdown(record, checked), cfg.storage)
    log.info("validated model %s on %s images: %s", art.model_id, f"{fig['n']:,}", verdict,
             extra={"event": {"model_id": art.model_id, "n": fig["n"], "held": record["held"]}})
    return Validation(checked, verdict, record)
