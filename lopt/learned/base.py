"""The learned-optimizer interface and helpers shared by every update rule.

A :class:`LearnedOptimizer` is a bundle of pure functions, in the style of
``optax.GradientTransformation``, with the meta-parameters ``theta`` passed explicitly so
that the same optimizer can be evaluated for a whole population of ``theta`` with
``jax.vmap`` and unrolled with ``jax.lax.scan``::

    opt = make_optimizer("unf", spec)
    theta = opt.init_meta(key)
    state = opt.init(params)
    updates, state = opt.update(theta, grads, state, params)
    params = optax.apply_updates(params, updates)

Meta-parameters that must stay in a range are stored unconstrained: positive ones as
their logarithm (``log_*``), ones in ``(0, 1)`` as their logit (``logit_*``). Any value
an outer optimizer writes into ``theta`` therefore maps to a valid hyperparameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.nf import spec as nfspec
from lopt.persistence import tree_mismatch

PyTree = Any


class LearnedOptimizer(NamedTuple):
    """An optimizer whose behaviour is set by meta-parameters ``theta``.

    Attributes:
        init_meta: ``init_meta(key, params=None) -> theta``, the initial meta-parameters.
            ``params`` (arrays or ``jax.ShapeDtypeStruct``) is needed only where the
            network's size depends on tensor shapes (axes a spec never permutes).
        init: ``init(params, num_steps=None) -> state``, the inner optimizer state (a
            NamedTuple); ``num_steps`` is the run's length, required where
            ``needs_num_steps`` (a rule that reads the fraction of the run done or follows a
            schedule over it).
        update: ``update(theta, grads, state, params, loss=None) -> (updates, state)``;
            add the updates with ``optax.apply_updates``.
        config: JSON-serialisable ``{"name": ..., **hyperparameters}``; together with a
            spec it rebuilds the optimizer (:func:`lopt.learned.optimizer_from_config`).
        spec: the permutation spec the optimizer was built for, where its meta-parameters
            depend on the weight space's structure (the learned rules); ``None`` otherwise.
        needs_num_steps: whether ``init`` must be told the run's length (``num_steps``);
            meta-training then passes each inner run's episode length, and an optax export
            takes it once, like a schedule's.
    """

    init_meta: Callable[..., PyTree]
    init: Callable[..., Any]
    update: Callable[..., tuple[PyTree, Any]]
    config: dict
    spec: Any = None
    needs_num_steps: bool = False


def log_positive(value: float, name: str) -> jax.Array:
    """The stored form of a positive meta-parameter: its natural logarithm (float32)."""
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return jnp.log(jnp.asarray(value, jnp.float32))


def check_unit(value: float, name: str) -> float:
    """``value``, unchanged; raises a ValueError unless it lies strictly in ``(0, 1)``."""
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return value


def check_non_negative(value: float, name: str) -> float:
    """``value``, unchanged; raises a ValueError unless it is at least zero (not NaN)."""
    if not value >= 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return value


def logit_unit(value: float, name: str) -> jax.Array:
    """The stored form of a meta-parameter in ``(0, 1)``: its logit (float32)."""
    value = jnp.asarray(check_unit(value, name), jnp.float32)
    return jnp.log(value) - jnp.log1p(-value)


def require_params(params: PyTree | None, name: str) -> PyTree:
    """Raises a ValueError explaining that ``name`` needs the current parameters."""
    if params is None:
        raise ValueError(
            f"the {name!r} optimizer needs the current parameters: call "
            "update(grads, state, params) with params (its update depends on the weights)"
        )
    return params


def check_like(reference: PyTree, other: PyTree, what: str, against: str) -> None:
    """Raises a ValueError naming the mismatch when two trees differ in structure or shapes."""
    mismatch = tree_mismatch(reference, other, ordered=True)
    if mismatch is not None:
        raise ValueError(f"{what} do not match the {against}: {mismatch}")


def validate_params(spec: nfspec.Spec | None, params: PyTree) -> None:
    """Checks ``params`` against ``spec`` (skipped when there is no spec)."""
    if spec is not None:
        nfspec.validate(spec, params)


def zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)
