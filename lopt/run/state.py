"""The state a run checkpoints: the meta-training state and the best theta so far.

:class:`RunState` is what every checkpoint of a run holds; :func:`keep_best` moves its best
theta on after a validation, and :func:`theta_location` names where a checkpoint keeps the
theta to export.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.tree_util import GetAttrKey, keystr

from lopt.evaluation.validation import ValidationScores
from lopt.meta import MetaState
from lopt.run.settings import validates


class RunState(NamedTuple):
    """What a checkpoint of a run holds.

    Attributes:
        meta: the meta-training state.
        best_theta: the theta with the lowest validation score so far (the initial theta
            before any validation, and always without validation).
        best_step: int32, the outer step of ``best_theta`` (0: the initial theta).
        best_score: float32, its validation score (:meth:`ValidationScores.score` of the
            run's validation metric; ``inf`` when not validated).
    """

    meta: MetaState
    best_theta: Any
    best_step: Any
    best_score: Any


def fresh_run_state(meta: MetaState) -> RunState:
    """The run state of a new run: its best theta is the initial one, not yet validated.

    Args:
        meta: the initial meta-training state.

    Returns:
        The run state.
    """
    return RunState(
        meta=meta,
        best_theta=meta.theta,
        best_step=jnp.zeros((), jnp.int32),
        best_score=jnp.full((), jnp.inf, jnp.float32),
    )


def keep_best(state: RunState, scores: ValidationScores, step: int, metric: str) -> RunState:
    """Moves the best theta to the current one if it validates strictly better.

    The scores are compared in float32, the precision the checkpoint keeps, so a resumed run
    decides exactly as an uninterrupted one.

    Args:
        state: the run state after outer step ``step``.
        scores: the current theta's validation.
        step: the outer step.
        metric: what selects the best theta (:meth:`ValidationScores.score`).

    Returns:
        ``state``, with ``best_*`` moved to the current theta if it is better.
    """
    score = np.float32(scores.score(metric))
    if not score < np.float32(state.best_score):
        return state
    return state._replace(
        best_theta=state.meta.theta,
        best_step=jnp.asarray(step, jnp.int32),
        best_score=jnp.asarray(score, jnp.float32),
    )


THETAS = ("best", "last")
"""The thetas a checkpoint holds: the best by validation up to its step, and its own."""


def theta_location(record: Mapping[str, Any], which: str = "best") -> str:
    """Where a run's checkpoint keeps a theta: the path prefix of its leaves.

    Args:
        record: the run's record, as the checkpoint keeps it.
        which: ``"best"`` (by validation; the checkpoint's own theta when the run does not
            validate) or ``"last"`` (the checkpoint's own theta).

    Returns:
        The prefix of the theta's leaf paths (:func:`lopt.checkpoint.describe`), for
        :func:`lopt.checkpoint.nested_dict`.

    Raises:
        ValueError: ``which`` is not one of :data:`THETAS`.
    """
    if which not in THETAS:
        raise ValueError(f"which theta: expected one of {THETAS}, got {which!r}")
    field = ("best_theta",) if which == "best" and validates(record) else ("meta", "theta")
    return keystr(tuple(GetAttrKey(name) for name in field))
