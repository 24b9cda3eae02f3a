"""Persistent Evolution Strategies (antithetic) and its non-persistent special case.

Notation: ``G`` pairs, truncation length ``K``, perturbation std ``sigma``. Each truncation
draws ``eps_g ~ N(0, sigma^2 I)`` per pair; member ``+`` runs ``theta + eps_g`` and member
``-`` runs ``theta - eps_g`` on the same data. Pair ``g`` keeps ``xi_g``, the sum of its
perturbations since its current episode began (the ``-`` member's history is ``-xi_g``).

An inner step's loss depends on every perturbation of the episode it belongs to. Step ``t``
of the truncation therefore uses ``xi_g + eps_g`` if it belongs to the episode that was
running when the truncation began, and ``eps_g`` alone if it follows a reset inside the
truncation (any number of resets is handled: only the first episode inherits ``xi``). With
per-step objective values ``v^±_t`` and weights ``w_t`` (:mod:`lopt.meta.objective`)::

    d_g,t = w_t (v^+_g,t - v^-_g,t)
    g_hat = mean over valid pairs of
            [ xi_g * sum_{t in first episode} d_g,t + eps_g * sum_t d_g,t ] / (2 sigma^2)

After the truncation ``xi_g <- xi_g + eps_g`` if no reset happened, ``eps_g`` if the last
reset fell before the final step, and ``0`` if it fell on the final step (the new episode has
not run yet). This is an unbiased estimate of the gradient of the Gaussian-smoothed
meta-objective of whole episodes (each truncation's perturbation independent).

Without persistence (``truncated_es``) the ``xi`` term is dropped: the estimate only sees how
this truncation's perturbation changes this truncation's losses and is biased towards greedy,
short-horizon behaviour.

A pair whose member produced a non-finite loss anywhere in the truncation is left out of the
mean, counted in ``num_nonfinite``, and (by the population) reset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.meta.base import (
    EstimateInfo,
    Estimator,
    antithetic_differences,
    antithetic_thetas,
    check_positive_float,
    check_positive_int,
    first_half,
    masked_mean,
    sample_perturbations,
)
from lopt.meta.population import ParticleState, Unroller, raw_key
from lopt.meta.tree_utils import tree_cosine, weighted_group_sum

PyTree = Any


class PESState(NamedTuple):
    """State of the (persistent) antithetic ES estimator.

    Attributes:
        population: ``2G`` particles, pair-major (``2g`` runs ``+``, ``2g + 1`` runs ``-``).
        accumulator: per-pair perturbation sum ``xi`` (theta's structure, leading axis ``G``),
            or ``None`` without persistence.
        key: uint32 ``(2,)``, source of the perturbations.
    """

    population: ParticleState
    accumulator: PyTree
    key: jax.Array


def persistent_gradient(
    eps: PyTree, accumulator: PyTree, diff: jax.Array, reset: jax.Array
) -> tuple[PyTree, PyTree]:
    """The PES sum for one truncation, before the ``1 / (2 sigma^2 G)`` scaling.

    Args:
        eps: this truncation's perturbations, leaves ``(G, ...)``.
        accumulator: ``xi``, each pair's perturbation sum since its episode began, leaves
            ``(G, ...)``.
        diff: ``(K, G)`` weighted objective differences ``w_t (v^+_t - v^-_t)``.
        reset: bool ``(K, G)``, the pair started a new episode after step ``t``.

    Returns:
        ``sum_g [xi_g * sum_{t in first episode} diff_g,t + eps_g * sum_t diff_g,t]`` and the
        next accumulator (see the module docstring).
    """
    resets_before = jnp.cumsum(reset, axis=0) - reset
    first_episode = resets_before == 0
    grad = jax.tree.map(
        jnp.add,
        weighted_group_sum(jnp.where(first_episode, diff, 0.0).sum(axis=0), accumulator),
        weighted_group_sum(diff.sum(axis=0), eps),
    )
    any_reset, reset_at_end = reset.any(axis=0), reset[-1]

    def next_xi(xi: jax.Array, e: jax.Array) -> jax.Array:
        shape = (-1,) + (1,) * (xi.ndim - 1)
        after_reset = jnp.where(reset_at_end.reshape(shape), jnp.zeros_like(e), e)
        return jnp.where(any_reset.reshape(shape), after_reset, xi + e)

    return grad, jax.tree.map(next_xi, accumulator, eps)


def pes(
    num_pairs: int,
    truncation_length: int,
    sigma: float,
    *,
    stagger: bool = True,
    persistent: bool = True,
) -> Estimator:
    """Antithetic Persistent Evolution Strategies (Vicol et al., 2021).

    Args:
        num_pairs: antithetic pairs ``G`` (the population has ``2G`` particles).
        truncation_length: inner steps ``K`` per estimate.
        sigma: standard deviation of the perturbations of theta.
        stagger: start pairs at staggered step counters so resets do not happen in lockstep.
        persistent: keep the accumulator ``xi`` (PES). ``False`` gives truncated ES.

    Returns:
        An :class:`~lopt.meta.base.Estimator`.
    """
    num_pairs = check_positive_int("num_pairs", num_pairs)
    truncation_length = check_positive_int("truncation_length", truncation_length)
    sigma = check_positive_float("sigma", sigma)
    name = "pes" if persistent else "truncated_es"

    def init(key: jax.Array, theta: PyTree, unroller: Unroller) -> PESState:
        population_key, key = jax.random.split(raw_key(key))
        population = unroller.init_population(population_key, num_pairs, 2, stagger)
        accumulator = (
            jax.tree.map(lambda t: jnp.zeros((num_pairs, *jnp.shape(t)), t.dtype), theta)
            if persistent
            else None
        )
        return PESState(population, accumulator, key)

    return Estimator(
        init=init,
        estimate=_pes_estimate(num_pairs, truncation_length, sigma, persistent),
        inner_steps=lambda unroller: 2 * num_pairs * truncation_length,
        particle_fields=("population", "accumulator"),
        config={
            "name": name,
            "num_pairs": num_pairs,
            "truncation_length": truncation_length,
            "sigma": sigma,
            "stagger": stagger,
        },
    )


def _pes_estimate(
    num_pairs: int, truncation_length: int, sigma: float, persistent: bool
) -> Callable[..., tuple[PyTree, PESState, EstimateInfo]]:
    """``Estimator.estimate`` of :func:`pes` (see the module docstring)."""

    def estimate(
        theta: PyTree, state: PESState, unroller: Unroller
    ) -> tuple[PyTree, PESState, EstimateInfo]:
        key, eps_key = jax.random.split(state.key)
        eps = sample_perturbations(eps_key, theta, num_pairs, sigma)
        thetas = antithetic_thetas(theta, eps)
        population, record = unroller.unroll(
            thetas, state.population, truncation_length, group_size=2
        )
        weights = unroller.objective.step_weights(record.ended)
        weighted = jnp.where(record.finite, record.objective * weights, 0.0)
        weighted, valid, diff = antithetic_differences(weighted, record.finite, num_pairs)
        num_valid = jnp.maximum(valid.sum(), 1)
        scale = 1.0 / (2.0 * sigma**2 * num_valid)

        def gradient(diff: jax.Array) -> tuple[PyTree, PyTree]:
            if persistent:
                return persistent_gradient(eps, state.accumulator, diff, record.reset)
            return weighted_group_sum(diff.sum(axis=0), eps), None

        grad, accumulator = gradient(diff)
        grad = jax.tree.map(lambda g: g * scale, grad)
        half = first_half(num_pairs)
        half_cosine = tree_cosine(
            gradient(jnp.where(half, diff, 0.0))[0], gradient(jnp.where(half, 0.0, diff))[0]
        )

        pair_objective = weighted.sum(axis=0).mean(axis=-1)  # (G,)
        info = EstimateInfo(
            meta_loss=masked_mean(record.loss, record.finite),
            objective=masked_mean(pair_objective, valid),
            num_episodes_ended=record.ended.reshape(truncation_length, num_pairs, 2)[..., 0]
            .sum()
            .astype(jnp.int32),
            num_nonfinite=(num_pairs - valid.sum()).astype(jnp.int32),
            half_cosine=half_cosine,
        )
        return grad, PESState(population, accumulator, key), info

    return estimate


def truncated_es(
    num_pairs: int, truncation_length: int, sigma: float, *, stagger: bool = True
) -> Estimator:
    """Antithetic ES on each truncation alone (no accumulator): biased, kept as a baseline."""
    return pes(num_pairs, truncation_length, sigma, stagger=stagger, persistent=False)
