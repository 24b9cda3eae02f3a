"""Hand-designed optimizers behind the learned-optimizer interface.

Their hyperparameters are the meta-parameters, so the same meta-training code can tune
them: ``sgdm`` learns its learning rate and momentum, ``adam`` its learning rate, ``b1``
and ``b2``. With the initial ``theta`` they reproduce ``optax.sgd(lr, momentum)`` and
``optax.adam(lr, b1, b2, eps)`` step by step. ``adam_cosine`` is Adam whose learning rate
follows optax's warmup-cosine schedule over a known number of steps, a stronger baseline
than a constant rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.learned.base import (
    LearnedOptimizer,
    check_like,
    check_non_negative,
    log_positive,
    logit_unit,
    validate_params,
    zero_count,
)
from lopt.nf import spec as nfspec

PyTree = Any

SGDM_DEFAULTS = {"learning_rate": 0.1, "momentum": 0.9}
ADAM_DEFAULTS = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}
COSINE_DEFAULTS = {"warmup_fraction": 0.05}


def warmup_cosine_factor(
    count: jax.Array | int, num_steps: jax.Array | int, warmup_fraction: float
) -> jax.Array:
    """The warmup-cosine multiplier of a step size after ``count`` updates of a
    ``num_steps``-update run, with both counts allowed to be traced values.

    Equal to ``optax.warmup_cosine_decay_schedule(0, 1, warmup, num_steps)`` at ``count + 1``
    (``count`` when there is no warmup), ``warmup = round(warmup_fraction * num_steps)``: the
    factor :func:`make_adam_cosine` applies, for rules that learn the run's length only at
    ``init``.

    Args:
        count: updates applied so far, int scalar.
        num_steps: the run's length in updates, int scalar (positive).
        warmup_fraction: fraction of the run spent ramping up linearly from zero, in ``[0, 1)``.

    Returns:
        float32 scalar in ``[0, 1]``.
    """
    total = jnp.asarray(num_steps, jnp.float32)
    warmup = jnp.round(jnp.float32(warmup_fraction) * total)
    step = jnp.asarray(count, jnp.float32) + (warmup > 0)
    ramp = step / jnp.maximum(warmup, 1.0)
    done = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * done))
    return jnp.where(step < warmup, ramp, cosine)


class SGDMState(NamedTuple):
    """State of momentum SGD: update count and momentum ``m ← μ m + g``."""

    count: jax.Array
    momentum: PyTree


class AdamState(NamedTuple):
    """State of Adam: update count and the first and second moment EMAs."""

    count: jax.Array
    mu: PyTree
    nu: PyTree


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    # theta's hyperparameters are float32 arrays, which would promote moments of a lower
    # precision; the state keeps the dtypes init gave it, as lax.scan's carry must.
    return jax.tree_util.tree_map(lambda x, y: x.astype(y.dtype), tree, like)


def _check_spec(spec: nfspec.Spec | None) -> None:
    if spec is not None:
        nfspec.validate(spec)


def _hand_designed(
    spec: nfspec.Spec | None,
    config: dict,
    initial: PyTree,
    init: Callable[[PyTree], Any],
    step: Callable[[PyTree, PyTree, Any], tuple[PyTree, Any]],
) -> LearnedOptimizer:
    """A rule whose meta-parameters are its hyperparameters, behind the learned interface.

    Args:
        spec: optional permutation spec (already validated); when given, ``init`` checks
            params against it.
        config: the optimizer's ``config``.
        initial: the initial meta-parameters (the same for every key and model).
        init: ``init(params) -> state``.
        step: ``step(theta, grads, state) -> (updates, state)``, the update at given
            meta-parameters (of gradients already checked against the params).
    """

    def init_meta(key: jax.Array, params: PyTree | None = None) -> PyTree:
        del key, params
        return dict(initial)

    def init_fn(params: PyTree) -> Any:
        validate_params(spec, params)
        return init(params)

    def update(theta, grads, state, params=None, loss=None):
        del loss
        if params is not None:
            check_like(params, grads, "gradients", "params")
        return step(theta, grads, state)

    return LearnedOptimizer(init_meta=init_meta, init=init_fn, update=update, config=config)


def _sgd(learning_rate: jax.Array, momentum: jax.Array) -> optax.GradientTransformation:
    """``optax.sgd(learning_rate, momentum)``, built so that its state is
    ``(optax.TraceState, optax.EmptyState)`` whatever optax's version."""
    return optax.chain(optax.trace(decay=momentum), optax.scale_by_learning_rate(learning_rate))


def _adam(
    learning_rate: jax.Array, b1: jax.Array, b2: jax.Array, eps: float
) -> optax.GradientTransformation:
    """``optax.adam(learning_rate, b1, b2, eps)``, built so that its state is
    ``(optax.ScaleByAdamState, optax.EmptyState)`` whatever optax's version."""
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps), optax.scale_by_learning_rate(learning_rate)
    )


def make_sgdm(
    spec: nfspec.Spec | None = None,
    *,
    learning_rate: float = SGDM_DEFAULTS["learning_rate"],
    momentum: float = SGDM_DEFAULTS["momentum"],
) -> LearnedOptimizer:
    """Momentum SGD, ``m ← μ m + g``, ``W ← W − η m``: ``optax.sgd`` at theta's η and μ.

    Args:
        spec: optional permutation spec; when given, ``init`` checks params against it.
        learning_rate: initial η (stored as ``log_learning_rate``).
        momentum: initial μ (stored as ``logit_momentum``).
    """
    _check_spec(spec)
    initial = {
        "log_learning_rate": log_positive(learning_rate, "learning_rate"),
        "logit_momentum": logit_unit(momentum, "momentum"),
    }

    def init(params: PyTree) -> SGDMState:
        return SGDMState(zero_count(), jax.tree_util.tree_map(jnp.zeros_like, params))

    def step(theta: PyTree, grads: PyTree, state: SGDMState) -> tuple[PyTree, SGDMState]:
        sgd = _sgd(jnp.exp(theta["log_learning_rate"]), jax.nn.sigmoid(theta["logit_momentum"]))
        inner = (optax.TraceState(trace=state.momentum), optax.EmptyState())
        updates, (trace, _) = sgd.update(grads, inner)
        momentum = _cast_like(trace.trace, state.momentum)
        return _cast_like(updates, momentum), SGDMState(state.count + 1, momentum)

    config = {"name": "sgdm", "learning_rate": float(learning_rate), "momentum": float(momentum)}
    return _hand_designed(spec, config, initial, init, step)


def make_adam(
    spec: nfspec.Spec | None = None,
    *,
    learning_rate: float = ADAM_DEFAULTS["learning_rate"],
    b1: float = ADAM_DEFAULTS["b1"],
    b2: float = ADAM_DEFAULTS["b2"],
    eps: float = ADAM_DEFAULTS["eps"],
) -> LearnedOptimizer:
    """Adam with bias correction: ``optax.adam`` at theta's learning rate, ``b1`` and ``b2``.

    Args:
        spec: optional permutation spec; when given, ``init`` checks params against it.
        learning_rate: initial learning rate (stored as ``log_learning_rate``).
        b1: initial first-moment decay (stored as ``logit_b1``).
        b2: initial second-moment decay (stored as ``logit_b2``).
        eps: fixed denominator offset (not meta-learned).
    """
    _check_spec(spec)
    check_non_negative(eps, "eps")
    initial = {
        "log_learning_rate": log_positive(learning_rate, "learning_rate"),
        "logit_b1": logit_unit(b1, "b1"),
        "logit_b2": logit_unit(b2, "b2"),
    }

    def init(params: PyTree) -> AdamState:
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return AdamState(zero_count(), zeros, zeros)

    def step(theta: PyTree, grads: PyTree, state: AdamState) -> tuple[PyTree, AdamState]:
        adam = _adam(
            jnp.exp(theta["log_learning_rate"]),
            jax.nn.sigmoid(theta["logit_b1"]),
            jax.nn.sigmoid(theta["logit_b2"]),
            eps,
        )
        updates, (moments, _) = adam.update(
            grads, (optax.ScaleByAdamState(*state), optax.EmptyState())
        )
        mu, nu = _cast_like(moments.mu, state.mu), _cast_like(moments.nu, state.nu)
        return _cast_like(updates, mu), AdamState(moments.count, mu, nu)

    config = {
        "name": "adam",
        "learning_rate": float(learning_rate),
        "b1": float(b1),
        "b2": float(b2),
        "eps": float(eps),
    }
    return _hand_designed(spec, config, initial, init, step)


def make_adam_cosine(
    spec: nfspec.Spec | None = None,
    *,
    total_steps: int,
    learning_rate: float = ADAM_DEFAULTS["learning_rate"],
    warmup_fraction: float = COSINE_DEFAULTS["warmup_fraction"],
    b1: float = ADAM_DEFAULTS["b1"],
    b2: float = ADAM_DEFAULTS["b2"],
    eps: float = ADAM_DEFAULTS["eps"],
) -> LearnedOptimizer:
    """Adam with a warmup-cosine learning rate: ``learning_rate`` times
    ``optax.warmup_cosine_decay_schedule(0, 1, warmup, total_steps)`` at the update count,
    where ``warmup = round(warmup_fraction * total_steps)``.

    Args:
        spec: optional permutation spec; when given, ``init`` checks params against it.
        total_steps: the run's length: the rate decays to zero over it.
        learning_rate: the peak rate (stored as ``log_learning_rate``).
        warmup_fraction: fraction of ``total_steps`` spent ramping up linearly from zero.
        b1, b2, eps: as :func:`make_adam`.
    """
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction!r}")
    adam = make_adam(spec, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    warmup = round(warmup_fraction * total_steps)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps, end_value=0.0)

    def update(theta, grads, state, params=None, loss=None):
        updates, new_state = adam.update(theta, grads, state, params, loss)
        factor = schedule(state.count + (1 if warmup else 0))
        return jax.tree_util.tree_map(lambda u: (u * factor).astype(u.dtype), updates), new_state

    config = {
        **adam.config,
        "name": "adam_cosine",
        "total_steps": total_steps,
        "warmup_fraction": float(warmup_fraction),
    }
    return adam._replace(update=update, config=config)
