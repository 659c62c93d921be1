"""A skinray model as the start of a new training (``train --init-model``): a clinic with a few hundred labelled
images fine-tunes the network that learnt from thousands, instead of starting from ImageNet.

The model's MobileNetV2 base (its fine-tuned filters) becomes the weights file the workers build from, so training
runs exactly as from ImageNet weights: a new head on the frozen base, then fine-tuning, then the operating point
fitted on the new validation split. The model's preprocessing and width are adopted, since its filters only fit them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from skinray import SkinrayError
from skinray.config import SkinrayConfig, with_values
from skinray.model.artifact import ModelArtifact

log = logging.getLogger("skinray.train")
BASE_FILE = "base.weights.h5"


def _base_weights(art: ModelArtifact) -> str:
    """The model's base saved once per model id (its content) where every worker on this machine can read it."""
    from skinray.model.network import base_of, members_of

    path = os.path.join(tempfile.gettempdir(), "skinray-init", art.model_id, BASE_FILE)
    if os.path.isfile(path):
        return path
    model = art.load_keras()
    if len(members_of(model)) > 1:
        raise SkinrayError(f"{art.uri} is an ensemble: its members have different bases; start from one model")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.weights.h5"
    base_of(model).save_weights(tmp)
    os.replace(tmp, path)
    return path


def start_from(cfg: SkinrayConfig) -> tuple[SkinrayConfig, dict[str, Any]]:
    """``cfg`` training from ``train.init_model``'s base (weights file, preprocessing, alpha), and its provenance."""
    t = cfg.train
    if t.weights != "imagenet":
        raise SkinrayError("give --weights or --init-model, not both")
    art = ModelArtifact.open(t.init_model, cfg.storage)
    pre, alpha = art.meta.preprocessing, float(art.meta.architecture.get("alpha", 1.0))
    scaling = "unit" if art.meta.architecture.get("input_scaling") == "[0, 1]" else "mobilenet"
    adopted = {"image.size": pre.size, "image.resize": pre.resize, "image.color_constancy": pre.color_constancy,
               "train.alpha": alpha, "train.input_scaling": scaling}
    changed = {k: v for k, v in adopted.items() if _get(cfg, k) != v}
    if changed:
        log.info("starting from model %s: its %s", art.model_id, ", ".join(f"{k} {v}" for k, v in changed.items()))
    cfg = with_values(cfg, {**adopted, "train.weights": _base_weights(art)})
    return cfg, {"model": art.uri, "model_id": art.model_id, "created_at": art.meta.created_at,
                 "sources": art.meta.data.get("sources")}


def _get(cfg: SkinrayConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)
