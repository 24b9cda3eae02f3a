"""Kendall's rank correlation τ-b (ties handled as scipy's ``kendalltau`` default)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def kendall_tau(x: jax.Array, y: jax.Array) -> jax.Array:
    """Kendall's τ-b between two ``(N,)`` vectors.

    τ-b = Σ_{i<j} sign(x_i - x_j) sign(y_i - y_j) / sqrt(n_x n_y), where ``n_x`` counts the
    pairs not tied in ``x`` (likewise ``n_y``). O(N²) memory: fine for held-out splits of a
    few thousand.

    Args:
        x: ``(N,)`` values, e.g. predictions.
        y: ``(N,)`` values, e.g. true metrics.

    Returns:
        A scalar in [-1, 1]; NaN when either vector is constant (no untied pairs).
    """
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"kendall_tau needs two vectors of one length, got {x.shape}, {y.shape}")
    sign_x = jnp.sign(x[:, None] - x[None, :])
    sign_y = jnp.sign(y[:, None] - y[None, :])
    # the full matrix counts every pair twice, numerator and denominators alike
    concordance = jnp.sum(sign_x * sign_y)
    return concordance / jnp.sqrt(jnp.sum(sign_x**2) * jnp.sum(sign_y**2))
