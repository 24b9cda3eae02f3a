"""Tunes a baseline's learning rate by a log-grid sweep on the tuning seeds.

Criterion: for each learning rate, the geometric mean over tuning seeds of the final training
loss (the mean over the last ``tail`` steps of each run, :func:`lopt.evaluation.stats.final_loss`,
floored at :data:`lopt.evaluation.stats.LOG_FLOOR`: the log-space measure every comparison
uses); a rate any of whose runs diverges (non-finite final loss) scores ``inf``. The lowest score
wins; ties go to the smaller rate. All rates and seeds of a sweep run as one vmapped program.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from lopt.evaluation import runner, stats
from lopt.evaluation.seeds import seed_keys
from lopt.learned import make_optimizer
from lopt.learned.optimizers import hyperparameters

BASELINES = ("sgdm", "adam", "adam_cosine")
"""Optimizers whose learning rate the sweep tunes."""

DEFAULT_GRIDS = {
    "sgdm": (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
    "adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1),
    "adam_cosine": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3),
}
"""Default log-grids of learning rates (half-decade steps)."""


class SweepResult(NamedTuple):
    """A learning-rate sweep of one baseline.

    Attributes:
        name: the baseline (``sgdm`` or ``adam``).
        hyperparameters: its other, fixed hyperparameters.
        learning_rates: the grid, ``(G,)``, ascending.
        seeds: the tuning seeds, ``(S,)``.
        final_losses: ``(G, S)`` final training loss of every run.
        scores: ``(G,)`` the criterion (geometric mean final loss; ``inf`` if a run diverged).
        best_index: index of the chosen rate.
        num_steps: inner steps of each run.
        tail: steps averaged into the final loss.
        trajectory: every run, rate-major (run ``g * S + s`` is rate ``g``, seed ``s``).
    """

    name: str
    hyperparameters: dict[str, Any]
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    final_losses: np.ndarray
    scores: np.ndarray
    best_index: int
    num_steps: int
    tail: int
    trajectory: runner.Trajectory | None = None

    @property
    def best_learning_rate(self) -> float:
        return self.learning_rates[self.best_index]

    def runs_of(self, index: int) -> runner.Trajectory:
        """The runs of the ``index``-th learning rate (one per seed)."""
        if self.trajectory is None:
            raise ValueError("this sweep result holds no trajectories")
        rows = slice(index * len(self.seeds), (index + 1) * len(self.seeds))
        return self.trajectory._replace(
            train_loss=self.trajectory.train_loss[rows],
            test_metrics={k: v[rows] for k, v in self.trajectory.test_metrics.items()},
        )

    @property
    def at_grid_edge(self) -> bool:
        """Whether the chosen rate is the smallest or largest of the grid (widen it)."""
        return len(self.learning_rates) > 1 and self.best_index in (
            0,
            len(self.learning_rates) - 1,
        )


def with_horizon(name: str, hyper: Mapping[str, Any], num_steps: int) -> dict[str, Any]:
    """``hyper`` plus ``total_steps=num_steps`` for a baseline whose schedule spans its run
    (``adam_cosine``); other baselines' hyperparameters are returned unchanged."""
    hyper = dict(hyper)
    if "total_steps" in hyperparameters(name):
        hyper["total_steps"] = num_steps
    return hyper


def check_grid(learning_rates: Sequence[float], name: str) -> tuple[float, ...]:
    """Validates a grid: non-empty, positive, finite, no duplicates; returns it sorted."""
    rates = tuple(float(rate) for rate in learning_rates)
    if not rates:
        raise ValueError(f"the learning-rate grid of {name!r} is empty")
    bad = [rate for rate in rates if not (math.isfinite(rate) and rate > 0)]
    if bad:
        raise ValueError(f"learning rates of {name!r} must be positive and finite, got {bad}")
    if len(set(rates)) != len(rates):
        raise ValueError(f"the learning-rate grid of {name!r} has duplicates: {list(rates)}")
    return tuple(sorted(rates))


def choose(scores: np.ndarray) -> int:
    """Index of the lowest finite score (the first on ties).

    Raises:
        ValueError: no score is finite (every rate diverged).
    """
    scores = np.asarray(scores, np.float64)
    if not np.isfinite(scores).any():
        raise ValueError("every learning rate of the sweep diverged; lower the grid")
    return int(np.argmin(np.where(np.isfinite(scores), scores, np.inf)))


def tune_learning_rate(
    task: Any,
    name: str,
    learning_rates: Sequence[float],
    seeds: Sequence[int],
    num_steps: int,
    *,
    tail_fraction: float = 0.1,
    hyperparameters: Mapping[str, Any] | None = None,
    num_test_batches: int = 1,
    held_out_split: str = "test",
) -> SweepResult:
    """Runs ``name`` with every learning rate of the grid from every tuning seed.

    Args:
        task: the task.
        name: ``"sgdm"`` or ``"adam"``.
        learning_rates: the grid.
        seeds: tuning seeds (disjoint from the evaluation seeds).
        num_steps: inner steps per run.
        tail_fraction: fraction of final steps averaged into a run's final loss.
        hyperparameters: other hyperparameters of the baseline (e.g. ``momentum``).
        num_test_batches: held-out batches per run (unused by the criterion).
        held_out_split: the split of those batches (``valid`` during meta-training).

    Returns:
        A :class:`SweepResult`.
    """
    if name not in BASELINES:
        raise ValueError(f"cannot tune {name!r}: the sweep tunes {list(BASELINES)}")
    rates = check_grid(learning_rates, name)
    hyper = dict(hyperparameters or {})
    if "learning_rate" in hyper:
        raise ValueError(f"{name}: learning_rate is tuned by the sweep; do not fix it")
    seeds = tuple(seeds)
    hyper = with_horizon(name, hyper, num_steps)
    opts = [make_optimizer(name, task.spec, learning_rate=rate, **hyper) for rate in rates]
    thetas = [opt.init_meta(jax.random.key(0)) for opt in opts for _ in seeds]
    keys = np.tile(np.asarray(seed_keys(seeds)), (len(rates), 1))
    trajectory = runner.run_seeds(
        task,
        opts[0],
        runner.stack_trees(thetas),
        keys,
        num_steps,
        num_test_batches=num_test_batches,
        per_run_theta=True,
        held_out_split=held_out_split,
    )
    tail = stats.tail_steps(num_steps, tail_fraction)
    finals = stats.final_loss(trajectory.train_loss, tail).reshape(len(rates), len(seeds))
    geometric = 10 ** stats.log_losses(finals).mean(axis=1)
    scores = np.where(np.isfinite(finals).all(axis=1), geometric, np.inf)
    return SweepResult(
        name=name,
        hyperparameters=hyper,
        learning_rates=rates,
        seeds=seeds,
        final_losses=finals,
        scores=scores,
        best_index=choose(scores),
        num_steps=num_steps,
        tail=tail,
        trajectory=trajectory,
    )


def tune_interior(
    task: Any,
    name: str,
    learning_rates: Sequence[float],
    seeds: Sequence[int],
    num_steps: int,
    *,
    max_extensions: int = 4,
    **options: Any,
) -> SweepResult:
    """:func:`~lopt.evaluation.sweep.tune_learning_rate`, with the grid extended by one
    point past an edge (the ratio of the grid's two points at that edge) while the best rate
    is at that edge, at most ``max_extensions`` times. A new point that diverges loses, so
    the old edge becomes interior.

    Returns:
        The last sweep; its ``at_grid_edge`` is false unless the extensions ran out.
    """
    rates = sorted(float(rate) for rate in learning_rates)
    sweep = tune_learning_rate(task, name, rates, seeds, num_steps, **options)
    for _ in range(max_extensions):
        if not sweep.at_grid_edge:
            break
        if sweep.best_index == 0:
            ratio = rates[1] / rates[0]
            rates = [rates[0] / ratio, *rates]
        else:
            ratio = rates[-1] / rates[-2]
            rates = [*rates, rates[-1] * ratio]
        sweep = tune_learning_rate(task, name, rates, seeds, num_steps, **options)
    return sweep
