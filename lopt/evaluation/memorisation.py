"""Does a task measure optimisation or memorisation? Tuned Adam's training and held-out losses.

A learned optimizer meta-trained on a task whose training examples a run can memorise learns
to memorise: it drives the training cross-entropy to float32 zero while the held-out loss
grows. A task fit for meta-training keeps, under a well-tuned optimizer at twice its horizon,

* a final training loss clearly above zero (:data:`MIN_TRAIN_LOSS`), and
* a held-out loss close to the training loss (within :data:`MAX_GAP` of it).

:func:`check_memorisation` measures both with the evaluation's own machinery: Adam tuned by the
evaluation's sweep at that horizon, then run from the evaluation seeds; final training loss as
everywhere (mean over the last 10% of steps; geometric mean over seeds), held-out loss on the
task's ``test`` split (mean over seeds). :func:`epochs_seen` says how often a run sees each
training example (or token) on average.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

from lopt.evaluation import stats
from lopt.evaluation.evaluate import EvalSettings, run_tuned
from lopt.evaluation.seeds import seed_keys
from lopt.evaluation.sweep import DEFAULT_GRIDS, tune_interior

MIN_TRAIN_LOSS = 1e-3
"""Tuned Adam's final training loss at twice the horizon stays above this (nats)."""

MAX_GAP = 0.25
"""Tuned Adam's held-out loss stays within this fraction of its final training loss."""


def epochs_seen(task: Any, num_steps: int) -> float:
    """Passes over the training split that ``num_steps`` batches make, on average.

    Images: ``steps * batch / examples``. Text: predicted tokens ``steps * batch * seq_len``
    over the training tokens. A task that distorts every drawn image afresh
    (``task.config["rotation"]`` etc.) never shows the same example twice; this counts
    passes over the underlying images all the same.
    """
    targets = jax.eval_shape(lambda: task.batch(jax.random.key(0))["targets"])
    return num_steps * math.prod(targets.shape) / task.split_size("train")


class MemorisationReport(NamedTuple):
    """Tuned Adam on one task at one horizon.

    Attributes:
        task: the task's name.
        num_steps: steps of every run.
        learning_rate: Adam's tuned learning rate.
        epochs: :func:`epochs_seen` at ``num_steps``.
        train_losses: ``(S,)`` final training loss per evaluation seed.
        held_out_losses: ``(S,)`` held-out (``test``) loss of the final parameters per seed.
    """

    task: str
    num_steps: int
    learning_rate: float
    epochs: float
    train_losses: np.ndarray
    held_out_losses: np.ndarray

    @property
    def train_loss(self) -> float:
        """Geometric mean final training loss over the seeds."""
        return stats.summarize_log(self.train_losses).geometric_mean

    @property
    def held_out_loss(self) -> float:
        """Mean held-out loss over the seeds."""
        return float(np.mean(self.held_out_losses))

    @property
    def gap(self) -> float:
        """Held-out loss over training loss, minus one (positive: held-out is higher)."""
        return self.held_out_loss / self.train_loss - 1.0

    @property
    def memorised(self) -> bool:
        """Whether the task fails either criterion of the module docstring."""
        finite = math.isfinite(self.train_loss) and math.isfinite(self.held_out_loss)
        return not finite or self.train_loss <= MIN_TRAIN_LOSS or abs(self.gap) > MAX_GAP


def check_memorisation(
    task: Any,
    num_steps: int,
    *,
    num_seeds: int = 5,
    settings: EvalSettings | None = None,
) -> MemorisationReport:
    """Tunes Adam at ``num_steps`` (the evaluation's sweep and tuning seeds) and runs it from
    ``num_seeds`` evaluation seeds.

    Args:
        task: the task.
        num_steps: the horizon to check (twice the meta-training horizon, usually).
        num_seeds: evaluation seeds.
        settings: evaluation settings to take seeds, tail and held-out batches from (default:
            :class:`EvalSettings` with ``num_seeds`` and ``num_steps``).
    """
    settings = settings or EvalSettings(num_seeds=num_seeds, num_steps=num_steps)
    settings.check()
    sweep = tune_interior(
        task,
        "adam",
        DEFAULT_GRIDS["adam"],
        settings.tuning,
        num_steps,
        max_extensions=settings.max_grid_extensions,
        tail_fraction=settings.tail_fraction,
    )
    result = run_tuned(task, "adam", sweep, seed_keys(settings.seeds), settings)
    trajectory = result.trajectory
    return MemorisationReport(
        task=task.name,
        num_steps=num_steps,
        learning_rate=sweep.best_learning_rate,
        epochs=epochs_seen(task, num_steps),
        train_losses=stats.final_loss(trajectory.train_loss, settings.tail),
        held_out_losses=np.asarray(trajectory.test_metrics["loss"]),
    )
