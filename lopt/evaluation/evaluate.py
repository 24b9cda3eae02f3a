"""An evaluation: trained optimizers and tuned baselines on one task, from held-out seeds.

>>> settings = EvalSettings(num_seeds=5, num_steps=2000)
>>> result = evaluate(task, [load_for_task("runs/unf", task)], settings)
>>> write_outputs(result, "eval_out")          # curves.png, results.json, results.md

Procedure:

1. Each baseline (``sgdm``, ``adam``) gets its learning rate from a log-grid sweep on the
   tuning seeds (:mod:`lopt.evaluation.sweep`).
2. Every optimizer — the trained ones and the tuned baselines — trains the task from the
   same evaluation seeds for ``num_steps`` steps (same initial parameters and data streams
   per seed across optimizers).
3. Per optimizer: the training-loss curves, the final loss (mean over the last ``tail``
   steps), held-out metrics of the final parameters, the steps its mean curve (trailing
   average over ``tail`` steps) needs to reach tuned Adam's mean final loss, and the wall
   time per step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax

from lopt.evaluation import runner, stats
from lopt.evaluation.loading import LoadedOptimizer
from lopt.evaluation.seeds import (
    EVAL_SEED_OFFSET,
    TUNING_SEED_OFFSET,
    check_disjoint,
    evaluation_seeds,
    seed_keys,
    tuning_seeds,
)
from lopt.evaluation.sweep import DEFAULT_GRIDS, SweepResult, tune_interior, with_horizon
from lopt.learned import make_optimizer
from lopt.provenance import environment

TARGET_BASELINE = "adam"
"""The baseline whose final loss sets the steps-to-target column."""


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What an evaluation runs.

    Attributes:
        num_seeds: evaluation runs per optimizer.
        num_steps: inner steps per run (set it above the meta-training horizon to test
            generalisation to longer training).
        seed_offset: first evaluation seed.
        num_tuning_seeds: runs per learning rate in the baselines' sweeps.
        tuning_seed_offset: first tuning seed.
        tuning_steps: steps per sweep run (None: ``num_steps``).
        baselines: ``{name: learning-rate grid}`` of the baselines to tune and run.
        baseline_hyperparameters: ``{name: {hyperparameter: value}}`` fixed in the sweep.
        tail_fraction: fraction of final steps averaged into a run's final loss.
        num_test_batches: held-out batches averaged into the final held-out metrics.
        max_grid_extensions: times a baseline's grid is extended by one rate past an edge
            its best rate sits on (:func:`lopt.evaluation.sweep.tune_interior`).
    """

    num_seeds: int = 10
    num_steps: int = 2000
    seed_offset: int = EVAL_SEED_OFFSET
    num_tuning_seeds: int = 3
    tuning_seed_offset: int = TUNING_SEED_OFFSET
    tuning_steps: int | None = None
    baselines: Mapping[str, Sequence[float]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_GRIDS)
    )
    baseline_hyperparameters: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=dict
    )
    tail_fraction: float = 0.1
    num_test_batches: int = 10
    max_grid_extensions: int = 4

    @property
    def seeds(self) -> tuple[int, ...]:
        return evaluation_seeds(self.num_seeds, self.seed_offset)

    @property
    def tuning(self) -> tuple[int, ...]:
        return tuning_seeds(self.num_tuning_seeds, self.tuning_seed_offset)

    @property
    def tail(self) -> int:
        return stats.tail_steps(self.num_steps, self.tail_fraction)

    def check(self) -> None:
        """Raises a ValueError naming the first invalid setting."""
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {self.num_steps!r}")
        if self.tuning_steps is not None and (
            not isinstance(self.tuning_steps, int) or self.tuning_steps < 1
        ):
            raise ValueError(f"tuning.num_steps must be positive, got {self.tuning_steps!r}")
        stats.tail_steps(self.num_steps, self.tail_fraction)
        seeds = self.seeds
        if self.baselines:
            check_disjoint(seeds, self.tuning)
        unknown = sorted(set(self.baseline_hyperparameters) - set(self.baselines))
        if unknown:
            raise ValueError(f"hyperparameters given for baselines {unknown} that are not run")


class OptimizerResult(NamedTuple):
    """One optimizer's evaluation.

    Attributes:
        label: display name.
        kind: ``"trained"`` or ``"baseline"``.
        config: the optimizer's config (a baseline's with its tuned learning rate).
        source: where a trained optimizer was loaded from (None for baselines).
        trajectory: the runs (:class:`lopt.evaluation.runner.Trajectory`), ``(S, T)``.
        meta_training: a trained optimizer's meta-training task, horizon and seed, if known.
    """

    label: str
    kind: str
    config: dict
    source: str | None
    trajectory: runner.Trajectory
    meta_training: dict | None = None


class EvalResult(NamedTuple):
    """An evaluation's raw results; :mod:`lopt.evaluation.report` summarises them.

    Attributes:
        task_name: the task's registry name.
        task_config: the task's sizes (``task.config``).
        settings: the settings used.
        sweeps: ``{baseline: SweepResult}``.
        optimizers: one :class:`OptimizerResult` per optimizer, trained ones first.
        environment: jax version, backend and device of the run.
    """

    task_name: str
    task_config: dict
    settings: EvalSettings
    sweeps: dict[str, SweepResult]
    optimizers: list[OptimizerResult]
    environment: dict


def unique_labels(labels: Sequence[str]) -> list[str]:
    """Makes labels unique by appending ``#2``, ``#3`` ... to repeats."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


Log = Callable[[str], None]
"""``log(message)``: where an evaluation reports its progress."""


def tune_baselines(task: Any, settings: EvalSettings, log: Log) -> dict[str, SweepResult]:
    """Each baseline's learning-rate sweep on the tuning seeds, grid extended past an edge
    its best rate sits on (:func:`~lopt.evaluation.sweep.tune_interior`).

    Returns:
        ``{baseline: SweepResult}``, in the order of ``settings.baselines``.
    """
    sweeps: dict[str, SweepResult] = {}
    for name, grid in settings.baselines.items():
        hyper = dict(settings.baseline_hyperparameters.get(name, {}))
        log(f"tuning {name}: {len(grid)} learning rates x {settings.num_tuning_seeds} seeds")
        sweeps[name] = tune_interior(
            task,
            name,
            grid,
            settings.tuning,
            settings.tuning_steps or settings.num_steps,
            max_extensions=settings.max_grid_extensions,
            tail_fraction=settings.tail_fraction,
            hyperparameters=hyper,
        )
        log(f"  {name}: best learning rate {sweeps[name].best_learning_rate:g}")
    return sweeps


def run_trained(
    task: Any, loaded: LoadedOptimizer, keys: jax.Array, settings: EvalSettings
) -> OptimizerResult:
    """A trained optimizer's runs from the evaluation seeds' raw ``(S, 2)`` ``keys``."""
    trajectory = runner.run_seeds(
        task,
        loaded.opt,
        loaded.theta,
        keys,
        settings.num_steps,
        num_test_batches=settings.num_test_batches,
    )
    return OptimizerResult(
        loaded.label, "trained", loaded.config, loaded.source, trajectory, loaded.meta_training
    )


def run_tuned(
    task: Any, name: str, sweep: SweepResult, keys: jax.Array, settings: EvalSettings
) -> OptimizerResult:
    """The baseline ``name`` at its sweep's best learning rate, from the evaluation seeds'
    raw ``(S, 2)`` ``keys``."""
    # A schedule spans the evaluated run, which may be longer than the tuning runs.
    hyper = with_horizon(name, sweep.hyperparameters, settings.num_steps)
    opt = make_optimizer(name, task.spec, learning_rate=sweep.best_learning_rate, **hyper)
    trajectory = runner.run_seeds(
        task,
        opt,
        opt.init_meta(jax.random.key(0)),
        keys,
        settings.num_steps,
        num_test_batches=settings.num_test_batches,
    )
    return OptimizerResult(name, "baseline", dict(opt.config), None, trajectory)


def evaluate(
    task: Any,
    trained: Sequence[LoadedOptimizer],
    settings: EvalSettings,
    log: Log | None = None,
) -> EvalResult:
    """Tunes the baselines, then runs every optimizer from the evaluation seeds.

    Args:
        task: the evaluation task (e.g. wider than the one meta-trained on).
        trained: trained optimizers loaded for this task (:func:`load_for_task`).
        settings: see :class:`EvalSettings`.
        log: optional ``log(message)`` for progress.

    Returns:
        An :class:`EvalResult`.
    """
    settings.check()
    measured_on = environment()  # the source's commit as the evaluation starts
    log = log or (lambda message: None)
    keys = seed_keys(settings.seeds)
    sweeps = tune_baselines(task, settings, log)
    results = []
    for loaded in trained:
        log(f"running {loaded.label} ({loaded.config['name']}) on {settings.num_seeds} seeds")
        results.append(run_trained(task, loaded, keys, settings))
    for name, sweep in sweeps.items():
        log(f"running tuned {name} on {settings.num_seeds} seeds")
        results.append(run_tuned(task, name, sweep, keys, settings))
    labels = unique_labels([result.label for result in results])
    results = [result._replace(label=label) for result, label in zip(results, labels, strict=True)]
    return EvalResult(
        task_name=task.name,
        task_config=dict(task.config),
        settings=settings,
        sweeps=sweeps,
        optimizers=results,
        environment=measured_on,
    )


def generalization(result: EvalResult, meta_training: dict | None) -> dict | None:
    """How the evaluation differs from meta-training: task sizes and horizon.

    Returns:
        ``{"task_changes": {option: [meta-trained, evaluated]}, "same_task": bool,
        "family_member": bool (the evaluated task is one of a task family's further members
        it was meta-trained on), "horizon_ratio": evaluated steps / meta-training horizon
        (None if unknown)}``, or None when the meta-training setup is unknown.
    """
    if not meta_training:
        return None
    trained = meta_training.get("task") or {}
    trained_config = trained.get("config") or {}
    changes = {
        key: [trained_config.get(key), value]
        for key, value in result.task_config.items()
        if key != "name" and key in trained_config and trained_config[key] != value
    }
    horizon = meta_training.get("horizon")
    ratio = result.settings.num_steps / horizon if isinstance(horizon, int) and horizon else None
    members = [{**trained_config, **options} for options in meta_training.get("family") or ()]
    evaluated = {k: v for k, v in result.task_config.items() if k != "name"}
    return {
        "same_task": trained.get("name") == result.task_name,
        "task_changes": changes,
        "family_member": trained.get("name") == result.task_name
        and any(all(m.get(k) == v for k, v in evaluated.items() if k in m) for m in members),
        "horizon_ratio": ratio,
    }


def target_loss(result: EvalResult) -> float | None:
    """Tuned Adam's geometric mean final loss over the evaluation seeds (None without Adam,
    or when none of its seeds is finite)."""
    for optimizer in result.optimizers:
        if optimizer.kind == "baseline" and optimizer.config["name"] == TARGET_BASELINE:
            finals = stats.final_loss(optimizer.trajectory.train_loss, result.settings.tail)
            geometric = stats.summarize_log(finals).geometric_mean
            return geometric if math.isfinite(geometric) else None
    return None
