"""Input features of the learned update rule, computed per tensor of a weight space.

Every tensor ``W`` of shape ``S`` gets a feature tensor of shape ``(*S, 19)``:

====================  ========  ==============================================================
channels              count     content
====================  ========  ==============================================================
0                     1         the weights ``W``
1                     1         the gradient ``g``
2 .. 7                6         momenta ``m_γ ← γ m_γ + (1 − γ) g`` for γ in
                                :data:`FEATURE_DECAYS`
8 .. 18               11        ``tanh(t / τ − 1)`` for τ in :data:`TIMESCALES`, the same
                                value at every entry
====================  ========  ==============================================================

The last 11 channels depend on the rule's time input (:data:`TIME_INPUTS`): the absolute step
count above (the UNF paper's), the fraction of the run done ``f = t / T`` of a run of ``T``
steps, as ``tanh(f / s − 1)`` for s in :data:`FRACTION_SCALES` (:func:`fraction_features`),
or none at all.

The eight per-entry channels are each *clipped* to ``[-clip, clip]`` (default
:data:`DEFAULT_CLIP` ``= 1``, the value the UNF paper's code uses) and then divided by
their root mean square over the whole tensor. The clip bounds the influence of outliers
and of diverging runs; the RMS division makes the features independent of the tensor's
scale. An RMS over a whole tensor is invariant to any permutation of its entries, so the
features are equivariant to every permutation a spec allows.

The feature momenta are exponential moving averages (weight ``1 − γ`` on the new
gradient), so they stay on the gradient's scale for every γ and one clip value fits all
channels.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

FEATURE_DECAYS: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
"""Decay rates γ of the momenta fed to the network."""

TIMESCALES: tuple[float, ...] = tuple(float(tau) for tau in np.logspace(0.0, 5.0, 11))
"""Timescales τ of the step-count features: 11 values log-spaced from 1 to 1e5."""

DEFAULT_CLIP = 1.0
"""Per-entry features are clipped to ``[-DEFAULT_CLIP, DEFAULT_CLIP]`` before RMS division."""

RMS_EPS = 1e-16
"""Added to the mean square before the square root: an all-zero tensor stays zero."""

NUM_ENTRY_FEATURES = 2 + len(FEATURE_DECAYS)
NUM_TIME_FEATURES = len(TIMESCALES)
NUM_FEATURES = NUM_ENTRY_FEATURES + NUM_TIME_FEATURES

FRACTION_SCALES: tuple[float, ...] = tuple(float(s) for s in np.logspace(-2.0, 0.0, 11))
"""Scales s of the fraction-of-run features: 11 values log-spaced from 0.01 to 1."""

TIME_INPUTS = ("absolute", "none", "fraction")
"""What the network learns of the step count: ``absolute`` (the 11 :func:`time_features`, the
UNF paper's), ``none`` (no time input: the rule is the same function at every step, so a
run longer than meta-training's horizon feeds it nothing it has not seen) or ``fraction``
(the 11 :func:`fraction_features` of the fraction of the run done: the rule is told the
run's length, like a schedule, and a longer run stretches what it learned)."""


def num_features(time: str = "absolute") -> int:
    """Input channels of the update network for a :data:`TIME_INPUTS` choice."""
    if time not in TIME_INPUTS:
        raise ValueError(f"time must be one of {TIME_INPUTS}, got {time!r}")
    return NUM_ENTRY_FEATURES if time == "none" else NUM_FEATURES


def time_features(step: jax.Array | int) -> jax.Array:
    """The step-count embedding ``tanh(t / τ − 1)`` for every τ in :data:`TIMESCALES`.

    Args:
        step: the number of updates applied so far, scalar (any integer or float dtype).

    Returns:
        ``(11,)`` float32.
    """
    t = jnp.asarray(step, jnp.float32)
    return jnp.tanh(t / jnp.asarray(TIMESCALES, jnp.float32) - 1.0)


def fraction_features(step: jax.Array | int, num_steps: jax.Array | int) -> jax.Array:
    """The embedding ``tanh(f / s − 1)`` of the fraction of the run done, ``f = step /
    num_steps`` clipped to ``[0, 1]``, for every s in :data:`FRACTION_SCALES`.

    Args:
        step: the number of updates applied so far, scalar.
        num_steps: the run's length in updates, scalar (positive).

    Returns:
        ``(11,)`` float32.
    """
    done = jnp.asarray(step, jnp.float32) / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1)
    done = jnp.clip(done, 0.0, 1.0)
    return jnp.tanh(done / jnp.asarray(FRACTION_SCALES, jnp.float32) - 1.0)


def init_feature_momenta(params: PyTree, num_decays: int = len(FEATURE_DECAYS)) -> PyTree:
    """Zero momenta: one ``(*shape, num_decays)`` tensor per parameter tensor."""
    return jax.tree_util.tree_map(
        lambda p: jnp.zeros((*jnp.shape(p), num_decays), jnp.result_type(p, jnp.float32)), params
    )


def update_feature_momenta(
    momenta: PyTree, grads: PyTree, decays: tuple[float, ...] = FEATURE_DECAYS
) -> PyTree:
    """One EMA step of every feature momentum: ``m ← γ m + (1 − γ) g``.

    Args:
        momenta: leaves ``(*shape, len(decays))``.
        grads: leaves ``(*shape)``.
        decays: the decay of each trailing channel.

    Returns:
        The updated momenta, same shapes.
    """

    def step(m: jax.Array, g: jax.Array) -> jax.Array:
        gamma = jnp.asarray(decays, m.dtype)
        return gamma * m + (1.0 - gamma) * g[..., None].astype(m.dtype)

    return jax.tree_util.tree_map(step, momenta, grads)


def normalize(x: jax.Array, clip: float = DEFAULT_CLIP) -> jax.Array:
    """Clips every channel of one tensor, then divides it by its RMS over the tensor.

    Args:
        x: ``(*shape, C)``; the statistics are taken over ``shape`` for each channel.
        clip: the clip bound (positive).

    Returns:
        ``(*shape, C)`` with every channel's mean square ≈ 1 (or 0 for an all-zero one).
    """
    clipped = jnp.clip(x, -clip, clip)
    axes = tuple(range(x.ndim - 1))
    mean_square = jnp.mean(jnp.square(clipped), axis=axes, keepdims=True)
    return clipped * jax.lax.rsqrt(mean_square + RMS_EPS)


def entry_features(
    params: PyTree, grads: PyTree, momenta: PyTree, clip: float = DEFAULT_CLIP
) -> PyTree:
    """The normalised per-entry channels: weights, gradient, feature momenta.

    Args:
        params: leaves ``(*shape)``.
        grads: leaves ``(*shape)``.
        momenta: leaves ``(*shape, len(FEATURE_DECAYS))``, already updated with ``grads``.
        clip: see :func:`normalize`.

    Returns:
        Leaves ``(*shape, 2 + len(FEATURE_DECAYS))`` float32.
    """

    def one(p: jax.Array, g: jax.Array, m: jax.Array) -> jax.Array:
        stacked = jnp.concatenate(
            [
                p[..., None].astype(jnp.float32),
                g[..., None].astype(jnp.float32),
                m.astype(jnp.float32),
            ],
            axis=-1,
        )
        return normalize(stacked, clip)

    return jax.tree_util.tree_map(one, params, grads, momenta)


def with_time_features(entry: PyTree, step: jax.Array | int) -> PyTree:
    """Appends the :func:`time_features` of ``step`` to every entry of every tensor."""
    embedding = time_features(step)

    def append(x: jax.Array) -> jax.Array:
        broadcast = jnp.broadcast_to(embedding.astype(x.dtype), (*x.shape[:-1], embedding.size))
        return jnp.concatenate([x, broadcast], axis=-1)

    return jax.tree_util.tree_map(append, entry)


def weight_space_features(
    params: PyTree,
    grads: PyTree,
    momenta: PyTree,
    step: jax.Array | int,
    clip: float = DEFAULT_CLIP,
) -> PyTree:
    """All 19 input channels of the update network (see the module docstring).

    Args:
        params: leaves ``(*shape)``.
        grads: leaves ``(*shape)``.
        momenta: leaves ``(*shape, 6)``, already updated with ``grads``.
        step: number of updates applied before this one.
        clip: see :func:`normalize`.

    Returns:
        Leaves ``(*shape, 19)`` float32.
    """
    return with_time_features(entry_features(params, grads, momenta, clip), step)
