"""Meta-validation: scores a learned optimizer's theta on whole inner episodes of held-out seeds.

A meta-training run cannot tell from its meta-loss whether it learned: the loss of a
truncation swings with the phase of the particles' episodes. Validation instead trains the
task from a fixed set of seeds (:func:`lopt.evaluation.seeds.validation_seeds`, never used by
meta-training, evaluation or tuning runs) for a whole episode at the meta-training horizon,
with the evaluation runner (:func:`lopt.evaluation.runner.make_run_fn`; compiled once, theta
is an argument), and reports the evaluation's measures with standard errors over the seeds.
The runs train on the task's ``train`` split; their held-out loss is measured on ``valid``
(never on ``test``, which is the evaluation's alone).

The best theta is chosen on :attr:`ValidationSettings.metric`: ``final_loss`` (the default),
the geometric mean of the runs' final training losses (the mean of their logs, floored at
:data:`lopt.evaluation.stats.LOG_FLOOR`), or ``valid_loss``, the mean held-out loss on
``valid``.

>>> validator = make_validator(task, opt, ValidationSettings(num_seeds=4, num_steps=2000))
>>> scores = validator(theta)            # a ValidationScores
>>> reference = reference_scores(task, validator, theta0)   # theta0 and tuned Adam
>>> reference.ratios(scores.score("final_loss"), "final_loss")   # {"val_vs_adam": ...}

The reference Adam's learning rate is the best of a log-grid sweep on the validation seeds
themselves at the same horizon, so its level is the best any grid rate reaches on exactly
these runs: a strict reference, not a flattering one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from lopt.evaluation import runner, stats
from lopt.evaluation.seeds import VALIDATION_SEED_OFFSET, seed_keys, validation_seeds
from lopt.evaluation.sweep import tune_interior

PyTree = Any

DEFAULT_ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
"""Learning rates of the reference Adam's sweep (extended at an edge, see
:func:`lopt.evaluation.sweep.tune_interior`)."""

MEASURES = ("final_loss", "mean_loss", "valid_loss")
"""What a validation reports per seed: the evaluation's final training loss (mean over the
last ``tail_fraction`` of steps), the mean training loss over the whole episode, and the
held-out loss of the final parameters on the ``valid`` split."""

METRICS = ("final_loss", "valid_loss")
"""What can select the best theta (:meth:`ValidationScores.score`)."""


@dataclasses.dataclass(frozen=True)
class ValidationSettings:
    """How theta is validated.

    Attributes:
        num_seeds: inner runs per validation (one per seed).
        num_steps: inner steps of each run (the meta-training horizon).
        seed_offset: first validation seed (at least
            :data:`~lopt.evaluation.seeds.VALIDATION_SEED_OFFSET`).
        tail_fraction: fraction of final steps averaged into a run's final loss.
        num_test_batches: held-out batches averaged into the held-out loss.
        adam_learning_rates: the reference Adam's sweep grid.
        metric: what selects the best theta, one of :data:`METRICS`.
    """

    num_seeds: int = 4
    num_steps: int = 1000
    seed_offset: int = VALIDATION_SEED_OFFSET
    tail_fraction: float = 0.1
    num_test_batches: int = 4
    adam_learning_rates: Sequence[float] = DEFAULT_ADAM_GRID
    metric: str = "final_loss"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"validation metric must be one of {METRICS}, got {self.metric!r}")
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(
                f"validation num_steps must be a positive integer, got {self.num_steps!r}"
            )
        if not isinstance(self.num_test_batches, int) or self.num_test_batches < 1:
            raise ValueError(
                f"validation num_test_batches must be a positive integer, got "
                f"{self.num_test_batches!r}"
            )
        stats.tail_steps(self.num_steps, self.tail_fraction)
        validation_seeds(self.num_seeds, self.seed_offset)

    @property
    def seeds(self) -> tuple[int, ...]:
        return validation_seeds(self.num_seeds, self.seed_offset)

    @property
    def tail(self) -> int:
        return stats.tail_steps(self.num_steps, self.tail_fraction)


class ValidationScores(NamedTuple):
    """One validation: per-seed values of every :data:`MEASURES` entry.

    Attributes:
        final_loss: ``(S,)`` final training loss per seed.
        mean_loss: ``(S,)`` mean training loss over the episode per seed.
        valid_loss: ``(S,)`` held-out loss of the final parameters on ``valid`` per seed.
    """

    final_loss: np.ndarray
    mean_loss: np.ndarray
    valid_loss: np.ndarray

    def score(self, metric: str = "final_loss") -> float:
        """What selects the best theta (lower is better; ``inf`` if any seed diverged, so a
        theta that breaks one run never counts as the best).

        Args:
            metric: ``final_loss``: the geometric mean of the final training losses (floored
                at :data:`lopt.evaluation.stats.LOG_FLOOR`); ``valid_loss``: the mean held-out
                loss.
        """
        if metric not in METRICS:
            raise ValueError(f"validation metric must be one of {METRICS}, got {metric!r}")
        values = np.asarray(getattr(self, metric), np.float64)
        if not np.isfinite(values).all():
            return math.inf
        if metric == "final_loss":
            return float(10 ** stats.log_losses(values).mean())
        return float(values.mean())

    def summary(self) -> dict[str, float]:
        """``{measure: mean, measure + "_se": standard error}`` over the seeds, and
        ``final_loss_gmean``, the geometric mean final loss (:meth:`score`)."""
        out: dict[str, float] = {}
        for name in MEASURES:
            values = np.asarray(getattr(self, name), np.float64)
            mean = float(values.mean()) if np.isfinite(values).all() else math.inf
            out[name] = mean
            out[f"{name}_se"] = float(stats.standard_error(values))
        out["final_loss_gmean"] = self.score("final_loss")
        return out

    def to_json(self) -> dict[str, list[float | None]]:
        """Per-seed values, JSON-ready (non-finite values as ``None``)."""
        clean = lambda v: float(v) if math.isfinite(v) else None
        return {name: [clean(v) for v in getattr(self, name)] for name in MEASURES}

    @classmethod
    def from_json(cls, document: dict) -> ValidationScores:
        """Inverse of :meth:`to_json`."""
        read = lambda values: np.asarray([math.inf if v is None else v for v in values])
        return cls(**{name: read(document[name]) for name in MEASURES})


def scores_from_losses(train_loss: Any, valid_loss: Any, tail: int) -> ValidationScores:
    """The validation measures of ``N`` runs from their ``(N, T)`` training losses and
    ``(N,)`` held-out losses."""
    curves = np.asarray(train_loss, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        mean_loss = curves.mean(axis=-1)
    return ValidationScores(
        final_loss=stats.final_loss(curves, tail),
        mean_loss=mean_loss,
        valid_loss=np.asarray(valid_loss, np.float64),
    )


def make_validator(
    task: Any, opt: Any, settings: ValidationSettings
) -> Callable[[PyTree], ValidationScores]:
    """Builds ``validate(theta) -> ValidationScores`` for one task and optimizer.

    The whole validation (every seed's episode) is one jitted program, compiled at the
    first call and reused for every later theta of the same structure.
    """
    keys = seed_keys(settings.seeds)
    run = jax.jit(
        runner.make_run_fn(
            opt, settings.num_steps, settings.num_test_batches, held_out_split="valid"
        )
    )
    tail = settings.tail

    def validate(theta: PyTree) -> ValidationScores:
        losses, metrics = jax.device_get(run(task, theta, keys))  # losses: (T, N)
        return scores_from_losses(np.asarray(losses).T, metrics["loss"], tail)

    return validate


class Reference(NamedTuple):
    """The levels a run's validations are read against.

    Attributes:
        theta0: the initial theta's validation.
        adam: the reference Adam's validation (its best sweep rate, same seeds and horizon).
        adam_learning_rate: that rate.
        adam_grid: the sweep's grid (after any extension).
        adam_grid_scores: the sweep's score per rate.
    """

    theta0: ValidationScores
    adam: ValidationScores
    adam_learning_rate: float
    adam_grid: tuple[float, ...]
    adam_grid_scores: tuple[float, ...]

    def ratios(self, score: float, metric: str = "final_loss") -> dict[str, float]:
        """A validation score (:meth:`ValidationScores.score` of ``metric``) ÷ Adam's and ÷
        theta0's on the same metric."""
        divide = lambda a, b: a / b if b > 0 and math.isfinite(b) else math.nan
        return {
            "val_vs_adam": divide(score, self.adam.score(metric)),
            "val_vs_theta0": divide(score, self.theta0.score(metric)),
        }

    def to_json(self) -> dict:
        clean = lambda v: float(v) if math.isfinite(v) else None
        return {
            "theta0": self.theta0.to_json(),
            "adam": self.adam.to_json(),
            "adam_learning_rate": self.adam_learning_rate,
            "adam_grid": list(self.adam_grid),
            "adam_grid_scores": [clean(v) for v in self.adam_grid_scores],
        }

    @classmethod
    def from_json(cls, document: dict) -> Reference:
        return cls(
            theta0=ValidationScores.from_json(document["theta0"]),
            adam=ValidationScores.from_json(document["adam"]),
            adam_learning_rate=float(document["adam_learning_rate"]),
            adam_grid=tuple(document["adam_grid"]),
            adam_grid_scores=tuple(
                math.inf if v is None else v for v in document["adam_grid_scores"]
            ),
        )


def reference_scores(
    task: Any,
    validator: Callable[[PyTree], ValidationScores] | None,
    theta0: PyTree,
    settings: ValidationSettings,
) -> Reference:
    """Tunes the reference Adam on the validation seeds and validates ``theta0`` (left
    ``None`` without a ``validator``, for a caller that picks theta0 from the sweep)."""
    sweep = tune_interior(
        task,
        "adam",
        settings.adam_learning_rates,
        settings.seeds,
        settings.num_steps,
        tail_fraction=settings.tail_fraction,
        num_test_batches=settings.num_test_batches,
        held_out_split="valid",
    )
    # The sweep ran Adam on exactly the validation runs: its best rate's runs are Adam's
    # validation (the same seeds, horizon, tail and held-out batches).
    adam_runs = sweep.runs_of(sweep.best_index)
    adam_scores = scores_from_losses(
        adam_runs.train_loss, adam_runs.test_metrics["loss"], settings.tail
    )
    return Reference(
        theta0=None if validator is None else validator(theta0),
        adam=adam_scores,
        adam_learning_rate=sweep.best_learning_rate,
        adam_grid=tuple(sweep.learning_rates),
        adam_grid_scores=tuple(float(s) for s in sweep.scores),
    )
