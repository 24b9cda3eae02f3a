"""The outer optimizer of theta: global-norm clipping that cannot overflow, linear warmup."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lopt.meta.tree_utils import global_norm

PyTree = Any


def linear_warmup(peak: float, warmup_steps: int) -> float | Callable[[jax.Array], jax.Array]:
    """A learning rate rising linearly to ``peak`` over ``warmup_steps`` outer steps.

    The rate of update ``count`` (0-based) is ``peak * min(1, (count + 1) / warmup_steps)``:
    it starts at ``peak / warmup_steps``, so the first update is never wasted.

    Args:
        peak: the learning rate after the warmup.
        warmup_steps: length of the warmup (0: none).

    Returns:
        An optax schedule, or ``peak`` itself when there is no warmup.

    Raises:
        ValueError: ``warmup_steps`` is negative.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not warmup_steps:
        return peak

    def rate(count: jax.Array) -> jax.Array:
        return peak * jnp.minimum(1.0, (count + 1) / warmup_steps)

    return rate


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` whose norm cannot overflow.

    Evolution-strategy estimates from particles that are diverging but still finite can have
    a global norm beyond float32 range; optax's version then scales the update to zero,
    whereas this one keeps its direction.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")

    def clip(updates: PyTree, params: PyTree | None = None) -> PyTree:
        del params
        norm = global_norm(updates)
        factor = jnp.where(norm > max_norm, max_norm / norm, 1.0)
        return jax.tree.map(lambda u: (u * factor).astype(u.dtype), updates)

    return optax.stateless(clip)


def default_outer_optimizer(
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    max_grad_norm: float = 1.0,
) -> optax.GradientTransformation:
    """Adam with a linear learning-rate warmup, after global-norm gradient clipping.

    Args:
        learning_rate: peak Adam learning rate.
        warmup_steps: outer steps over which the rate ramps linearly from 0 (0: no warmup;
            see :func:`linear_warmup`).
        max_grad_norm: global-norm clipping threshold applied to the meta-gradient.
    """
    rate = linear_warmup(learning_rate, warmup_steps)
    return optax.chain(clip_by_global_norm(max_grad_norm), optax.adam(rate))
