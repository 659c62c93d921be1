"""The phase schedule as data, and the resume rules: plain functions, tested without Ray.

Training runs in phases (the head on the frozen base, then fine-tuning of the top base layers); a checkpoint
remembers the :class:`TrainState`; :func:`next_position` says where a run (re-)starts, :func:`stopped_early` when
early stopping ended a phase, and :func:`epoch_share` which rows each worker trains on in an epoch. The worker loop
that follows them is :mod:`skinray.train.loop`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skinray.config import TrainConfig


@dataclass(frozen=True)
class Phase:
    """One training phase; epochs are numbered globally (phase 2 starts after phase 1's whole budget)."""

    number: int
    first_epoch: int
    epochs: int
    learning_rate: float
    unfreeze_layers: int = 0  # 0: the base stays as built (frozen with pretrained weights)
    cosine: bool = False

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1


def schedule(t: TrainConfig) -> list[Phase]:
    """Head phase (frozen base), then — when configured — fine-tuning of the top base layers."""
    phases = [Phase(1, 1, t.epochs, t.learning_rate)]
    if t.fine_tune_epochs and t.fine_tune_layers:
        phases.append(Phase(2, t.epochs + 1, t.fine_tune_epochs, t.fine_tune_learning_rate, t.fine_tune_layers,
                            t.fine_tune_schedule == "cosine"))
    return phases


@dataclass
class TrainState:
    """What a checkpoint remembers besides weights: the history, the best epoch so far and its validation score."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None

    @property
    def epoch(self) -> int:
        return max((h["epoch"] for h in self.history), default=0)

    def epochs_in(self, phase: Phase) -> list[int]:
        return [h["epoch"] for h in self.history if h["phase"] == phase.number]


def stopped_early(state: TrainState, phase: Phase, patience: int) -> bool:
    """Whether early stopping ended ``phase`` after its last recorded epoch (no val gain in ``patience`` epochs).

    Per phase: a head phase that stalls hands over to fine-tuning, fine-tuning that stalls ends training.
    """
    done = state.epochs_in(phase)
    if not patience or not done or state.best_epoch is None:
        return False
    return max(done) - max(state.best_epoch, phase.first_epoch - 1) >= patience


def next_position(state: TrainState, phases: list[Phase], patience: int,
                  last_epoch: int | None = None) -> tuple[int, int] | None:
    """(index of the phase to run, the next global epoch), or None when training is complete: every phase done or
    stopped early, or ``last_epoch`` (a fixed epoch count, chosen by cross-validation) reached."""
    for i, phase in enumerate(phases):
        done = state.epochs_in(phase)
        if (done and max(done) >= phase.last_epoch) or stopped_early(state, phase, patience):
            continue
        epoch = max(done) + 1 if done else phase.first_epoch
        return None if last_epoch is not None and epoch > last_epoch else (i, epoch)
    return None


def epoch_share(n: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """Which of the ``n`` training rows ``rank`` trains on in ``epoch``, in order: one permutation of all rows keyed
    by (seed, epoch), the same on every rank, dealt out in turn; the last ``n % world`` rows of it sit the epoch out,
    so every rank runs as many steps. The same seed gives the same batches on every run and after a resume (Ray
    Data's split of a dataset among workers varies from run to run, and so did the networks it trained)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[: n - n % world][rank::world]
