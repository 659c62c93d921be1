"""What one training creates — its runs' checkpoint folders, the checkpoint root, ``--out`` — and removing it again
when the trained network did not learn (:mod:`skinray.train.learned` judges): a training that writes no model
leaves ``--out`` as it was, and whatever existed before it is left alone.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from skinray import DataError
from skinray.config import SkinrayConfig, TrainConfig
from skinray.io import storage
from skinray.train import learned

log = logging.getLogger("skinray.train")


def run_names(name: str, t: TrainConfig) -> list[str]:
    """Every Ray Train run (and the fold results folder) one training keeps under its storage path."""
    if not t.folds:
        return [name]
    return [name, *(f"{name}-fold{f + 1}of{t.folds}" for f in range(t.folds)), f"{name}-final"]


def absent(cfg: SkinrayConfig, storage_path: str, name: str) -> list[str]:
    """What this training may create that does not exist yet, innermost first: its runs' checkpoint folders, the
    checkpoint root, ``--out``. A training that writes no model removes them again (:func:`discard`)."""
    uris = [storage.join(storage_path, run) for run in run_names(name, cfg.train)] + [storage_path, cfg.train.out]
    return [uri for uri in uris if not storage.exists(uri, cfg.storage)]


def _empty(uri: str, cfg: SkinrayConfig) -> bool:
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri, cfg.storage)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return not any(info.type == pafs.FileType.File for info in infos)


def discard(created: list[str], storage_path: str, cfg: SkinrayConfig) -> None:
    """Remove what this training created (:func:`absent`'s list): its own runs' folders, then the checkpoint root
    and ``--out`` where nothing else landed in them meanwhile. Whatever existed before is left as it was."""
    for uri in created:
        own_run = uri not in (storage_path, cfg.train.out)
        if own_run or _empty(uri, cfg):
            storage.delete(uri, cfg.storage)


def require_learned(cfg: SkinrayConfig, held_rows: pd.DataFrame, z_held: np.ndarray, scores: str,
                    created: list[str], storage_path: str) -> None:
    """No model from a network that did not learn (:mod:`skinray.train.learned`): constant or non-finite held-out
    outputs, or a held-out ROC-AUC not above chance at ``train.above_chance_confidence``. Stops with one line (exit
    3) after removing what this training created, so ``--out`` is as it was."""
    t = cfg.train
    verdict = learned.judge(held_rows["label"].to_numpy(int), z_held, t.above_chance_confidence or None, t.seed)
    if not verdict.dead:
        log.debug("%s: %s", scores, verdict.describe())
        return
    discard(created, storage_path, cfg)
    few = (f"; {verdict.n:,} held-out images may be too few to tell (a larger prepare.val_fraction, or --folds K "
           "to judge on every train+val image)" if verdict.ci is not None else "")
    raise DataError(f"the trained network did not learn, no model written to {t.out}: on {scores} {verdict.problem}. "
                    f"Try another train.seed or a lower train.learning_rate (now {t.learning_rate:g}), more epochs "
                    f"or images{few}")
