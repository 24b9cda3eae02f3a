"""Starting theta at a tuned baseline: its step size set to its base optimizer's learning
rate tuned on the validation runs."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from lopt.evaluation.sweep import DEFAULT_GRIDS, tune_interior
from lopt.evaluation.validation import Reference, ValidationSettings
from lopt.run.errors import RunError
from lopt.run.settings import RunParts

STEP_SIZE_KEYS = ("log_alpha", "log_learning_rate")
"""Where theta stores its step size: the learned rules' ``α``, the baselines' learning rate."""


def tuned_step_size(
    parts: RunParts, settings: ValidationSettings, reference: Reference | None
) -> tuple[str, float]:
    """The baseline the learned optimizer's base direction is, and its tuned learning rate.

    Args:
        parts: what the run trains.
        settings: the validation settings (seeds, horizon, tail).
        reference: the validation's reference levels, whose tuned Adam serves the ``adam``
            base.

    Returns:
        The baseline's name and its learning rate tuned at the validation horizon on the
        validation seeds.

    Raises:
        RunError: the optimizer has no baseline to tune.
    """
    config = parts.opt.config
    base = config.get("base", config["name"])
    schedule = config.get("schedule", "constant")
    if base == "adam" and schedule == "warmup_cosine":
        sweep = tune_interior(
            parts.task,
            "adam_cosine",
            DEFAULT_GRIDS["adam_cosine"],
            settings.seeds,
            settings.num_steps,
            tail_fraction=settings.tail_fraction,
            hyperparameters={
                "b1": config["gamma0"],
                "b2": config["b2"],
                "eps": config["eps"],
                "warmup_fraction": config["warmup_fraction"],
            },
        )
        return "adam_cosine", sweep.best_learning_rate
    if schedule != "constant":
        raise RunError(
            f"start_at_tuned: no baseline to tune for base {base!r} with schedule {schedule!r}"
        )
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
    """``theta`` with its step size (:data:`STEP_SIZE_KEYS`) set to ``learning_rate``.

    Raises:
        RunError: theta has no step size.
    """
    key = next((k for k in STEP_SIZE_KEYS if k in theta), None)
    if key is None:
        raise RunError(f"start_at_tuned: theta has no step size among {STEP_SIZE_KEYS}")
    return {**theta, key: jnp.log(jnp.asarray(learning_rate, jnp.float32))}
