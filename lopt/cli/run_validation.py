"""Meta-validation inside ``lopt-train``: the run state that carries the best theta, the
settings and reference levels of a run's validation, and what the summary says of it.

The measuring itself is :mod:`lopt.evaluation.validation`; this module connects it to a
run: a checkpoint holds :class:`RunState` (the meta-training state and the best theta so
far), :func:`prepare_validation` reads or computes ``validation/reference.json``, and
``start_at_tuned`` sets the initial theta's step size from a learning-rate sweep.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from lopt.cli.common import RunError, write_json
from lopt.evaluation.sweep import DEFAULT_GRIDS, tune_interior
from lopt.evaluation.validation import (
    MEASURES,
    Reference,
    ValidationScores,
    ValidationSettings,
    make_validator,
    reference_scores,
)
from lopt.meta import MetaState

log = logging.getLogger("lopt.train")

LAST_OPTIMIZER_DIR = "optimizer_last"
"""Where a run keeps its last theta when ``optimizer/`` holds the best by validation."""

REFERENCE_FILE = "validation/reference.json"


VALIDATION_KEYS = (
    *(f"val_{name}{suffix}" for name in MEASURES for suffix in ("", "_se")),
    "val_final_loss_gmean",
    "val_vs_adam",
    "val_vs_theta0",
)
"""The validation columns of ``metrics.jsonl``/``.csv`` (empty on steps not validated)."""


class RunState(NamedTuple):
    """What a checkpoint of a ``lopt-train`` run holds.

    Attributes:
        meta: the meta-training state.
        best_theta: the theta with the lowest validation score so far (the initial theta
            before any validation, or the current theta when validation is off).
        best_step: int32, the outer step of ``best_theta`` (0: the initial theta).
        best_score: float32, its validation score (:meth:`ValidationScores.score` of the
            run's ``validation.metric``; ``inf`` when not validated).
    """

    meta: MetaState
    best_theta: Any
    best_step: Any
    best_score: Any


class Validation(NamedTuple):
    """A run's meta-validation: how often, the validating function, the reference levels,
    and the metric that selects the best theta."""

    every: int
    validate: Any
    reference: Reference
    metric: str = "final_loss"


def fresh_run_state(meta: MetaState) -> RunState:
    """The run state of a new run: its best theta is the initial one, not yet validated."""
    return RunState(
        meta=meta,
        best_theta=meta.theta,
        best_step=jnp.zeros((), jnp.int32),
        best_score=jnp.full((), jnp.inf, jnp.float32),
    )


def keep_best(state: RunState, scores: ValidationScores, step: int, metric: str) -> RunState:
    """``state`` with ``best_*`` moved to the current theta if it validates strictly better
    on ``metric`` (compared in float32, the precision the checkpoint keeps, so a resumed run
    decides exactly as an uninterrupted one)."""
    score = np.float32(scores.score(metric))
    if not score < np.float32(state.best_score):
        return state
    return state._replace(
        best_theta=state.meta.theta,
        best_step=jnp.asarray(step, jnp.int32),
        best_score=jnp.asarray(score, jnp.float32),
    )


def validation_summary(
    state: RunState, reference: Reference, records: list[dict], metric: str
) -> dict:
    """What the run's validation found: the best theta's step, its score on the selecting
    ``metric`` and its other measures (from ``records``, the run's validated metrics
    records), its ratios to the initial theta and the reference Adam, the last theta's
    scores, and a one-line verdict."""
    best_score = float(state.best_score)
    improved = int(state.best_step) > 0
    ratios = reference.ratios(best_score, metric)
    adam = reference.adam.summary()
    theta0 = reference.theta0.summary()
    best = next((r for r in records if r["step"] == int(state.best_step)), None)
    if best is None:
        best = {f"val_{k}": v for k, v in theta0.items()}
    last = records[-1] if records else None
    if not improved:
        verdict = (
            "validation never improved on the initial theta: optimizer/ holds theta0, "
            "meta-training did not help"
        )
    else:
        verdict = (
            f"best theta at step {int(state.best_step)}: validation {metric} "
            f"{ratios['val_vs_theta0']:.3g}x theta0's and {ratios['val_vs_adam']:.3g}x "
            f"tuned Adam's ({'beats' if ratios['val_vs_adam'] < 1 else 'does not beat'} Adam)"
        )
    finite = lambda v: v if v is None or math.isfinite(v) else None
    summary = {
        "metric": metric,
        "best_step": int(state.best_step),
        "best_score": best_score,
        "best_final_loss_gmean": best["val_final_loss_gmean"],
        "best_valid_loss": best["val_valid_loss"],
        "best_vs_theta0": ratios["val_vs_theta0"],
        "best_vs_adam": ratios["val_vs_adam"],
        "improved_on_theta0": improved,
        "theta0_final_loss_gmean": theta0["final_loss_gmean"],
        "theta0_valid_loss": theta0["valid_loss"],
        "adam_final_loss_gmean": adam["final_loss_gmean"],
        "adam_valid_loss": adam["valid_loss"],
        "adam_learning_rate": reference.adam_learning_rate,
        "last_final_loss_gmean": None if last is None else last["val_final_loss_gmean"],
        "last_valid_loss": None if last is None else last["val_valid_loss"],
        "verdict": verdict,
    }
    return {k: finite(v) if isinstance(v, float) else v for k, v in summary.items()}


def validation_settings(config: dict) -> ValidationSettings | None:
    """The run's validation settings (``None`` when ``validation.every`` is 0)."""
    options = dict(config["validation"])
    every = options.pop("every")
    if every < 0:
        raise RunError(f"validation.every must be >= 0, got {every}")
    if every == 0:
        return None
    if options["num_steps"] is None:
        options["num_steps"] = int(config["schedule"]["max_length"])
    options["adam_learning_rates"] = tuple(options["adam_learning_rates"])
    try:
        return ValidationSettings(**options)
    except ValueError as err:
        raise RunError(f"invalid validation settings: {err}") from err


STEP_SIZE_KEYS = ("log_alpha", "log_learning_rate")
"""Where theta stores its step size: the learned rules' ``α``, the baselines' learning rate."""


def tuned_step_size(
    parts: Any, settings: ValidationSettings, reference: Reference
) -> tuple[str, float]:
    """The baseline that the learned optimizer's base direction is, and its learning rate
    tuned at the validation horizon on the validation seeds (Adam's is the reference's)."""
    config = parts.opt.config
    base = config.get("base", config["name"])
    if base == "adam":
        return "adam", reference.adam_learning_rate
    if base != "sgdm":
        raise RunError(f"start_at_tuned: no baseline to tune for optimizer {config['name']!r}")
    momentum = config.get("gamma0", config.get("momentum"))
    sweep = tune_interior(
        parts.task,
        "sgdm",
        DEFAULT_GRIDS["sgdm"],
        settings.seeds,
        settings.num_steps,
        tail_fraction=settings.tail_fraction,
        hyperparameters={"momentum": momentum},
    )
    return "sgdm", sweep.best_learning_rate


def with_step_size(theta: Any, learning_rate: float) -> Any:
    """``theta`` with its step size (:data:`STEP_SIZE_KEYS`) set to ``learning_rate``."""
    key = next((k for k in STEP_SIZE_KEYS if k in theta), None)
    if key is None:
        raise RunError(f"start_at_tuned: theta has no step size among {STEP_SIZE_KEYS}")
    return {**theta, key: jnp.log(jnp.asarray(learning_rate, jnp.float32))}


def prepare_validation(
    config: dict,
    parts: Any,
    run_dir: Path,
    settings: ValidationSettings,
    initial_theta: Callable[[], Any],
    write: bool = True,
) -> tuple[Validation, Any]:
    """The run's validator and its reference levels, read from ``validation/reference.json``
    when an earlier process of this run computed them, else computed (a learning-rate sweep
    of Adam and the initial theta's validation) and written there.

    Args:
        config: the resolved run config.
        parts: the run's parts (:func:`lopt.cli.common.build_parts`).
        run_dir: the run directory.
        settings: the validation settings.
        initial_theta: returns the initial theta as the optimizer makes it (called once).
        write: write ``validation/reference.json`` once computed (false on every process of
            a multi-process run but the first: they compute the same levels).

    Returns:
        The validation and the initial theta (with ``start_at_tuned``, its step size is the
        base optimizer's tuned learning rate).
    """
    validate = make_validator(parts.task, parts.opt, settings)
    path = run_dir / REFERENCE_FILE
    settings_json = json.loads(json.dumps(dataclasses.asdict(settings)))
    theta0 = initial_theta()
    every = config["validation"]["every"]
    if path.is_file():
        document = json.loads(path.read_text())
        if document.get("settings") == settings_json:
            if document.get("start_at_tuned"):
                theta0 = with_step_size(theta0, document["start_at_tuned"]["learning_rate"])
            reference = Reference.from_json(document)
            return Validation(every, validate, reference, settings.metric), theta0
    log.info(
        "validation: tuning the reference Adam and scoring theta0 (%d seeds, %d inner steps)",
        settings.num_seeds,
        settings.num_steps,
    )
    reference = reference_scores(parts.task, None, None, settings)
    tuned = None
    if config["start_at_tuned"]:
        baseline, rate = tuned_step_size(parts, settings, reference)
        tuned = {"baseline": baseline, "learning_rate": rate}
        theta0 = with_step_size(theta0, rate)
        log.info(
            "start_at_tuned: theta0's step size is %s's tuned learning rate %g", baseline, rate
        )
    reference = reference._replace(theta0=validate(theta0))
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"settings": settings_json, "start_at_tuned": tuned, **reference.to_json()}
        write_json(path, document)
    log.info(
        "validation reference (%s): theta0 %.4g, Adam %.4g (lr %g)",
        settings.metric,
        reference.theta0.score(settings.metric),
        reference.adam.score(settings.metric),
        reference.adam_learning_rate,
    )
    bound = parts.objective.max_loss
    theta0_final = reference.theta0.score("final_loss")
    if not math.isfinite(theta0_final) or (bound is not None and theta0_final > bound):
        log.warning(
            "the initial theta diverges on the validation runs (final loss %.3g): its steps are "
            "far too large for %s; lower lopt.alpha",
            theta0_final,
            parts.task.name,
        )
    return Validation(every, validate, reference, settings.metric), theta0


def validation_record(
    scores: ValidationScores, reference: Reference, metric: str
) -> dict[str, float]:
    """The validation columns of a metrics record; the ratios are on ``metric``."""
    record = {f"val_{k}": v for k, v in scores.summary().items()}
    record.update(reference.ratios(scores.score(metric), metric))
    return record
