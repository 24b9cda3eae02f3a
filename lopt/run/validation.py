"""A run's meta-validation: its validator and reference levels, the state it starts from,
and the validation columns of its metrics records.

The measuring itself is :mod:`lopt.evaluation.validation`; this module connects it to a
run: :func:`prepare_validation` reads or computes the reference levels
(:mod:`lopt.run.reference`), and with ``start_at_tuned`` sets the initial theta's step size
from a learning-rate sweep (:mod:`lopt.run.tuning`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.distributed import is_main_process, to_host
from lopt.evaluation.validation import (
    MEASURES,
    Reference,
    ValidationScores,
    ValidationSettings,
    make_validator,
    reference_scores,
)
from lopt.meta import MetaTrainer
from lopt.run.reference import (
    StoredReference,
    adam_cache_key,
    read_cached_adam,
    read_reference,
    write_cached_adam,
    write_reference,
)
from lopt.run.settings import RunParts, RunSettings
from lopt.run.state import RunState, fresh_run_state
from lopt.run.tuning import tuned_step_size, with_step_size

log = logging.getLogger("lopt.train")

VALIDATION_KEYS = (
    *(f"val_{name}{suffix}" for name in MEASURES for suffix in ("", "_se")),
    "val_final_loss_gmean",
    "val_vs_adam",
    "val_vs_theta0",
    "val_seconds",
)
"""The validation columns of ``metrics.jsonl``/``.csv`` (empty on steps not validated);
``val_seconds`` is the validation's wall time."""


class Validation(NamedTuple):
    """A run's meta-validation.

    Attributes:
        every: outer steps between validations.
        validate: ``theta -> ValidationScores``.
        reference: the reference levels.
        metric: what selects the best theta.
    """

    every: int
    validate: Any
    reference: Reference
    metric: str = "final_loss"


def prepare_validation(
    parts: RunParts,
    run_dir: Path,
    settings: ValidationSettings,
    every: int,
    start_at_tuned: bool,
    initial_theta: Callable[[], Any],
    write: bool = True,
    cache_dir: Path | None = None,
) -> tuple[Validation, Any]:
    """The run's validator and its reference levels.

    The levels are read from the run directory when an earlier process of this run
    computed them, else computed (a learning-rate sweep of Adam and the initial theta's
    validation) and written there. With ``cache_dir``, the tuned Adam is taken from an
    earlier run of the same task, settings and committed code when one cached it there
    (:func:`lopt.run.reference.adam_cache_key`), and cached there otherwise.

    Args:
        parts: what the run trains.
        run_dir: the run directory.
        settings: the validation settings.
        every: outer steps between validations.
        start_at_tuned: start theta's step size at its base optimizer's tuned learning rate.
        initial_theta: returns the initial theta as the optimizer makes it (called once).
        write: write the reference levels once computed (false on every process of a
            multi-process run but the first: they compute the same levels).
        cache_dir: the directory of cached reference Adams (None: no cache).

    Returns:
        The validation and the initial theta (with ``start_at_tuned``, its step size is the
        base optimizer's tuned learning rate).
    """
    validate = make_validator(parts.task, parts.opt, settings)
    theta0 = initial_theta()
    stored = read_reference(run_dir, settings)
    if stored is not None:
        if stored.tuned:
            theta0 = with_step_size(theta0, stored.tuned["learning_rate"])
        return Validation(every, validate, stored.reference, settings.metric), theta0
    reference = cached_or_tuned_adam(parts.task, settings, cache_dir, write)
    tuned = None
    if start_at_tuned:
        baseline, rate = tuned_step_size(parts, settings, reference)
        tuned = {"baseline": baseline, "learning_rate": rate}
        theta0 = with_step_size(theta0, rate)
        log.info(
            "start_at_tuned: theta0's step size is %s's tuned learning rate %g", baseline, rate
        )
    reference = reference._replace(theta0=validate(theta0))
    if write:
        write_reference(run_dir, settings, StoredReference(reference, tuned))
    log.info(
        "validation reference (%s): theta0 %.4g, Adam %.4g (lr %g)",
        settings.metric,
        reference.theta0.score(settings.metric),
        reference.adam.score(settings.metric),
        reference.adam_learning_rate,
    )
    warn_if_theta0_diverges(reference, parts)
    return Validation(every, validate, reference, settings.metric), theta0


def cached_or_tuned_adam(
    task: Any, settings: ValidationSettings, cache_dir: Path | None, write: bool
) -> Reference:
    """The reference Adam (theta0's scores left None): from the cache when an earlier run
    of the same task, settings and committed code put it there, else tuned (and cached)."""
    key = None if cache_dir is None else adam_cache_key(task, settings)
    cached = None if key is None else read_cached_adam(cache_dir, key)
    if cached is not None:
        log.info("validation: the reference Adam tuned by an earlier run (%s)", cached[1])
        log.info(
            "validation: scoring theta0 (%d seeds, %d inner steps)",
            settings.num_seeds,
            settings.num_steps,
        )
        return cached[0]
    log.info(
        "validation: tuning the reference Adam and scoring theta0 (%d seeds, %d inner steps)",
        settings.num_seeds,
        settings.num_steps,
    )
    reference = reference_scores(task, None, None, settings)
    if key is not None and write:
        write_cached_adam(cache_dir, key, reference)
    return reference


def warn_if_theta0_diverges(reference: Reference, parts: RunParts) -> None:
    """Warns when the initial theta's validation runs diverge (its steps are too large)."""
    bound = parts.objective.max_loss
    theta0_final = reference.theta0.score("final_loss")
    if not math.isfinite(theta0_final) or (bound is not None and theta0_final > bound):
        log.warning(
            "the initial theta diverges on the validation runs (final loss %.3g): its steps are "
            "far too large for %s; lower lopt.alpha",
            theta0_final,
            parts.task.name,
        )


def start_validation(
    settings: RunSettings,
    parts: RunParts,
    run_dir: Path,
    trainer: MetaTrainer,
    state: RunState,
    resumed: bool,
) -> tuple[RunState, Validation | None]:
    """The run's validation and the state to start from.

    A new run's best score is its initial theta's, and with ``start_at_tuned`` theta starts
    at the tuned step size; a resumed run keeps its state.

    Args:
        settings: the run's settings.
        parts: what it trains.
        run_dir: the run directory.
        trainer: the run's meta-trainer.
        state: the initial or restored state.
        resumed: whether ``state`` was restored.

    Returns:
        The state to start from and the validation (None when off).
    """
    if settings.validation is None:
        return state, None
    key = jax.random.PRNGKey(settings.seed)
    initial = (lambda: trainer.init(key).theta) if resumed else (lambda: state.meta.theta)
    validation, theta0 = prepare_validation(
        parts,
        run_dir,
        settings.validation,
        settings.validate_every,
        settings.start_at_tuned,
        lambda: to_host(initial()),
        write=is_main_process(),
        cache_dir=settings.reference_cache,
    )
    if not resumed:
        if settings.start_at_tuned:
            state = fresh_run_state(trainer.init(key, theta0))
        theta0_score = np.float32(validation.reference.theta0.score(validation.metric))
        state = state._replace(best_score=jnp.asarray(theta0_score, jnp.float32))
    return state, validation


def validation_record(
    scores: ValidationScores, reference: Reference, metric: str
) -> dict[str, float]:
    """The validation columns of a metrics record; the ratios are on ``metric``."""
    record = {f"val_{k}": v for k, v in scores.summary().items()}
    record.update(reference.ratios(scores.score(metric), metric))
    return record
