"""The memorisation check: epochs seen, and tuned Adam's training against held-out loss."""

import math

import numpy as np
import pytest

from lopt.evaluation.memorisation import (
    MAX_GAP,
    MIN_TRAIN_LOSS,
    MemorisationReport,
    check_memorisation,
    epochs_seen,
)
from lopt.tasks import get_task


def test_epochs_seen_counts_examples_or_predicted_tokens():
    digits = get_task("mlp_digits")
    assert epochs_seen(digits, 2000) == pytest.approx(2000 * 128 / 1438)
    text = get_task("rnn_text")
    assert epochs_seen(text, 2000) == pytest.approx(2000 * 64 * 16 / text.split_size("train"))


def report(train: list[float], held_out: list[float]) -> MemorisationReport:
    return MemorisationReport("t", 10, 0.01, 1.0, np.array(train), np.array(held_out))


def test_report_flags_a_zero_training_loss_and_a_large_gap():
    sound = report([0.2, 0.3], [0.26, 0.25])
    assert sound.train_loss == pytest.approx(math.sqrt(0.06))
    assert sound.gap == pytest.approx(0.255 / math.sqrt(0.06) - 1)
    assert not sound.memorised
    assert report([0.0, 1e-5], [0.5, 0.6]).memorised  # memorised: a training loss near 0
    assert report([0.1, 0.1], [0.2, 0.2]).memorised  # held-out twice the training loss
    assert report([0.1, np.nan], [0.1, 0.1]).memorised is False  # one diverged seed of two
    assert report([np.nan, np.nan], [0.1, 0.1]).memorised


@pytest.mark.slow
def test_augmented_digits_are_not_memorised_by_tuned_adam():
    """A short horizon (1,000 steps, ~90 passes over the 1,438 stored images): the stored
    digits are on their way to zero training loss, the augmented ones stay near held-out."""
    augmented = check_memorisation(get_task("mlp_augmented_digits"), 1000, num_seeds=3)
    assert augmented.train_loss > MIN_TRAIN_LOSS and abs(augmented.gap) <= MAX_GAP, augmented
    stored = check_memorisation(get_task("mlp_digits"), 1000, num_seeds=3)
    assert stored.gap > 2 * MAX_GAP, stored  # held-out far above training: memorised
