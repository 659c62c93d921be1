"""The worker loop's phase and resume rules, without Ray: schedule, early stopping per phase, where to resume."""

import pandas as pd

from skinray.config import TrainConfig
from skinray.data.prepared import diagnosis_index, malignant_diagnoses
from skinray.train.schedule import Phase, TrainState, next_position, schedule, stopped_early


def _state(*epochs, best=None):
    """epochs: (epoch, phase) pairs in order; best: the best epoch so far."""
    return TrainState(history=[{"epoch": e, "phase": p} for e, p in epochs], best_epoch=best)


def test_schedule_is_data():
    two = schedule(TrainConfig(epochs=4, fine_tune_epochs=10, fine_tune_layers=154, fine_tune_schedule="cosine"))
    assert [(p.number, p.first_epoch, p.last_epoch, p.unfreeze_layers, p.cosine) for p in two] == [
        (1, 1, 4, 0, False), (2, 5, 14, 154, True)]
    assert len(schedule(TrainConfig(epochs=3, fine_tune_epochs=0))) == 1
    assert len(schedule(TrainConfig(epochs=3, fine_tune_epochs=5, fine_tune_layers=0))) == 1


def test_a_fresh_run_starts_at_epoch_one():
    assert next_position(TrainState(), schedule(TrainConfig(epochs=4)), patience=3) == (0, 1)


def test_resume_inside_a_phase_continues_it():
    phases = schedule(TrainConfig(epochs=4, fine_tune_epochs=3))
    assert next_position(_state((1, 1), (2, 1), best=2), phases, 3) == (0, 3)
    assert next_position(_state((1, 1), (2, 1), (3, 1), (4, 1), (5, 2), best=5), phases, 3) == (1, 6)


def test_a_finished_head_hands_over_to_fine_tuning():
    phases = schedule(TrainConfig(epochs=2, fine_tune_epochs=3))
    assert next_position(_state((1, 1), (2, 1), best=2), phases, 3) == (1, 3)


def test_an_early_stopped_head_hands_over_even_when_killed_right_after():
    """Stopped after epoch 3 of 4 (best was 1, patience 2): a restart goes to fine-tuning, not to epoch 4."""
    phases = schedule(TrainConfig(epochs=4, fine_tune_epochs=3))
    state = _state((1, 1), (2, 1), (3, 1), best=1)
    assert stopped_early(state, phases[0], 2)
    assert next_position(state, phases, 2) == (1, 5)


def test_fine_tuning_counts_patience_from_its_own_start():
    phases = schedule(TrainConfig(epochs=4, fine_tune_epochs=6))
    state = _state(*[(e, 1) for e in range(1, 5)], (5, 2), best=4)
    assert not stopped_early(state, phases[1], 2)  # one epoch into phase 2, not two
    state = _state(*[(e, 1) for e in range(1, 5)], (5, 2), (6, 2), best=4)
    assert stopped_early(state, phases[1], 2) and next_position(state, phases, 2) is None


def test_patience_zero_never_stops_and_a_complete_run_is_done():
    phases = [Phase(1, 1, 2, 1e-3)]
    assert not stopped_early(_state((1, 1), (2, 1), best=1), phases[0], 0)
    assert next_position(_state((1, 1), (2, 1), best=1), phases, 0) is None


def test_a_fixed_epoch_count_ends_training_inside_or_between_phases():
    """The final model of a cross-validated training runs the folds' epoch count on the same schedule."""
    phases = schedule(TrainConfig(epochs=4, fine_tune_epochs=10))
    assert next_position(TrainState(), phases, 0, last_epoch=6) == (0, 1)
    assert next_position(_state(*[(e, 1) for e in range(1, 5)], best=4), phases, 0, 6) == (1, 5)
    assert next_position(_state(*[(e, 1) for e in range(1, 5)], (5, 2), (6, 2), best=6), phases, 0, 6) is None
    assert next_position(_state((1, 1), (2, 1), best=2), phases, 0, 2) is None  # inside the head phase
    assert next_position(_state((1, 1), (2, 1), best=2), phases, 0, 3) == (0, 3)


def test_diagnosis_index_maps_train_classes_and_marks_unknowns():
    tr = pd.DataFrame({"dx": ["MEL", "nv ", None, "bkl", ""]})
    va = pd.DataFrame({"dx": ["nv", "vasc", None]})  # vasc: not in train → no diagnosis target
    classes, tr2, va2 = diagnosis_index(tr, va, 0.5)
    assert classes == ["bkl", "mel", "nv"]
    assert tr2["dx_index"].tolist() == [1, 2, -1, 0, -1] and va2["dx_index"].tolist() == [2, -1, -1]
    assert diagnosis_index(tr, va, 0.0)[0] == []  # weight 0: off
    assert diagnosis_index(pd.DataFrame({"x": [1]}), va, 1.0)[0] == []  # no dx column: off, no error
    one_class, tr3, _ = diagnosis_index(pd.DataFrame({"dx": ["nv", "nv"]}), va, 1.0)
    assert one_class == [] and tr3["dx_index"].tolist() == [-1, -1]


def test_malignant_diagnoses_are_read_off_the_labels():
    tr = pd.DataFrame({"dx": ["Melanoma", "melanoma", "nevus", "nevus", "bcc", "lentigo", None],
                       "label": [1, 1, 0, 0, 1, 0, 1]})  # one mislabelled melanoma would not flip the class
    assert malignant_diagnoses(tr, ["bcc", "lentigo", "melanoma", "nevus", "unseen"]) == [True, False, True, False,
                                                                                           False]
    mixed = pd.DataFrame({"dx": ["x", "x", "x"], "label": [1, 0, 1]})
    assert malignant_diagnoses(mixed, ["x"]) == [True]  # mostly malignant


def test_each_epoch_deals_one_seeded_permutation_out_to_the_ranks():
    """Same seed → same batches on every run (Ray Data's split varied by run, and so did the trained networks);
    every rank gets as many rows, none twice, and the order changes from epoch to epoch."""
    import numpy as np

    from skinray.train.schedule import epoch_share

    shares = [epoch_share(1075, 42, 3, rank, 2) for rank in range(2)]
    assert [len(s) for s in shares] == [537, 537]
    both = np.concatenate(shares)
    assert len(set(both.tolist())) == 1074 and both.max() < 1075
    assert all(np.array_equal(epoch_share(1075, 42, 3, r, 2), shares[r]) for r in range(2))
    assert not np.array_equal(epoch_share(1075, 42, 4, 0, 2), shares[0])
    assert not np.array_equal(epoch_share(1075, 7, 3, 0, 2), shares[0])
    assert sorted(epoch_share(5, 0, 1, 0, 1).tolist()) == [0, 1, 2, 3, 4]  # one worker: every row


def test_an_epoch_with_constant_validation_outputs_is_never_the_best():
    """Issue 25: noise around one value ranks the validation images by chance; such an epoch was kept as the best."""
    import math

    import numpy as np

    from skinray.train.loop import _score

    record = {"val_auc": 0.62, "val_loss": 0.7}
    assert _score(record, np.array([0.3, -1.2, 2.0])) == 0.62
    assert _score(record, np.full(8, 0.0617) + np.linspace(0, 3e-7, 8)) == -math.inf
    assert _score({"val_auc": None, "val_loss": 0.7}, np.array([0.1, 0.2])) == -0.7  # one class: minus the loss
    assert _score({"val_auc": None, "val_loss": None}, np.zeros(0)) == 0.0  # no validation rows (a final run)
