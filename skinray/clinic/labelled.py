"""A clinic's labelled images, scored by a model: what ``skinray validate`` and ``skinray calibrate`` work from.

The manifest is read and cleaned exactly as ``prepare`` reads one (every row kept or rejected with a reason), then
scored through the same Ray Data plan as ``evaluate`` and nightly scoring, with the model's own views.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from skinray import SkinrayError
from skinray.config import SkinrayConfig, with_values
from skinray.data.images import error_reasons
from skinray.io import storage
from skinray.model.artifact import ModelArtifact

log = logging.getLogger("skinray.labelled")


@dataclass(frozen=True)
class LabelledScores:
    """Scored rows the model makes a call on (``label``, ``dx``, ``source``, ``prob_malignant``, ``raw_logit``), the
    rows its out-of-distribution guard set apart, and every row not scored."""

    manifest: str
    fingerprint: str  # SHA-256 of the manifest's bytes: which images a check or a refit rests on
    scored: pd.DataFrame
    not_scored: pd.DataFrame  # isic_id, image_uri, reason (rejected by the checks, or failed to score)
    outside: pd.DataFrame  # scored, but not like the training images: no call is made on them, none is judged

    @property
    def y(self) -> np.ndarray:
        return self.scored["label"].to_numpy(int)

    @property
    def dx(self) -> np.ndarray:
        from skinray.data.prepared import dx_codes

        return dx_codes(self.scored).fillna("").to_numpy(object)


def score(cfg: SkinrayConfig, art: ModelArtifact, manifest: str | None, images: str | None) -> LabelledScores:
    """Clean ``manifest`` (labels required) and score its images with the opened model ``art``."""
    from skinray.data.prepare import clean
    from skinray.inference.evaluate import predict_split

    if not manifest:
        raise SkinrayError("give --labelled, a manifest of labelled images (the columns prepare reads)")
    cleaned = clean(with_values(cfg, {"prepare.manifest": manifest, "prepare.images": images,
                                      "prepare.sources": []}))
    kept, rejects = cleaned.kept, cleaned.rejects
    log.info("scoring %s labelled images of %s (%s rejected by the checks)", f"{len(kept):,}", manifest,
             f"{len(rejects):,}")
    pred, _ = predict_split(with_values(cfg, {"evaluate.model": art.uri}), kept)
    failed = pred["error"].notna()
    not_scored = pd.concat([rejects, pred.loc[failed, ["isic_id", "image_uri"]].assign(
        reason=error_reasons(pred.loc[failed, "error"]))], ignore_index=True)
    outside = pred["out_of_distribution"].fillna(False).astype(bool) & ~failed
    scored = pred[~failed & ~outside].reset_index(drop=True)
    cal = art.meta.calibration  # the engine's own logit, before the model's calibration: what a refit starts from
    scored["raw_logit"] = (scored["logit_malignant"].to_numpy(float) - cal.bias) * cal.temperature
    return LabelledScores(manifest, _fingerprint(manifest, cfg), scored, not_scored,
                          pred[outside].reset_index(drop=True))


def _fingerprint(manifest: str, cfg: SkinrayConfig) -> str:
    """SHA-256 over the manifest's bytes (a Parquet folder: its files', in name order)."""
    digest = hashlib.sha256()
    files = storage.list_files(manifest, cfg.storage) if storage.is_dir(manifest, cfg.storage) else [manifest]
    for uri in sorted(files):
        digest.update(storage.read_bytes(uri, cfg.storage))
    return digest.hexdigest()
