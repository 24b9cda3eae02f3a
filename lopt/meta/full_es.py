"""Antithetic evolution strategies over whole episodes, for problems short enough to unroll.

Each estimate starts ``G`` pairs from fresh initial parameters, runs every pair for a whole
episode (``theta + eps_g`` and ``theta - eps_g`` on the same data) and returns::

    g_hat = mean over valid pairs of eps_g * sum_t w_t (v^+_g,t - v^-_g,t) / (2 sigma^2)

with ``w_t = 1 / length`` for the mean objective (``ended`` for the final one; see
:meth:`~lopt.meta.MetaObjective.step_weights`). Episodes of a variable-length schedule all
run ``schedule.max_length`` steps; steps past a pair's own length carry zero weight.
Unbiased for the smoothed objective, with no state to carry except the PRNG key; cost per
estimate is a full episode.
"""

from __future__ import annotations

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
    masked_mean,
    sample_perturbations,
)
from lopt.meta.objective import within_episode
from lopt.meta.population import Unroller, raw_key
from lopt.meta.tree_utils import weighted_group_sum

PyTree = Any


class FullESState(NamedTuple):
    """State of full-horizon ES.

    Attributes:
        key: uint32 ``(2,)``, source of perturbations and of each estimate's fresh episodes.
    """

    key: jax.Array


def full_es(num_pairs: int, sigma: float) -> Estimator:
    """Antithetic ES over complete episodes (see module docstring).

    Args:
        num_pairs: antithetic pairs ``G`` per estimate.
        sigma: standard deviation of the perturbations of theta.

    Returns:
        An :class:`~lopt.meta.base.Estimator`.
    """
    num_pairs = check_positive_int("num_pairs", num_pairs)
    sigma = check_positive_float("sigma", sigma)

    def init(key: jax.Array, theta: PyTree, unroller: Unroller) -> FullESState:
        del theta, unroller
        return FullESState(raw_key(key))

    def estimate(
        theta: PyTree, state: FullESState, unroller: Unroller
    ) -> tuple[PyTree, FullESState, EstimateInfo]:
        horizon = unroller.schedule.max_length
        key, population_key, eps_key = jax.random.split(state.key, 3)
        population = unroller.init_population(population_key, num_pairs, 2, stagger=False)
        eps = sample_perturbations(eps_key, theta, num_pairs, sigma)
        _, record = unroller.unroll(
            antithetic_thetas(theta, eps), population, horizon, group_size=2, reset=False
        )
        in_episode = within_episode(horizon, population.length)  # (T, 2G)
        weights = unroller.objective.step_weights(record.ended, population.length)
        counted = record.finite | ~in_episode
        weighted = jnp.where(record.finite & in_episode, record.objective * weights, 0.0)
        weighted, valid, diff = antithetic_differences(weighted, counted, num_pairs)
        diff = diff.sum(axis=0)
        scale = 1.0 / (2.0 * sigma**2 * jnp.maximum(valid.sum(), 1))
        grad = weighted_group_sum(diff * scale, eps)
        info = EstimateInfo(
            meta_loss=masked_mean(record.loss, record.finite & in_episode),
            objective=masked_mean(weighted.sum(axis=0).mean(axis=-1), valid),
            num_episodes_ended=jnp.asarray(num_pairs, jnp.int32),
            num_nonfinite=(num_pairs - valid.sum()).astype(jnp.int32),
        )
        return grad, FullESState(key), info

    return Estimator(
        init=init,
        estimate=estimate,
        inner_steps=lambda unroller: 2 * num_pairs * unroller.schedule.max_length,
        particle_fields=(),
        config={"name": "full_es", "num_pairs": num_pairs, "sigma": sigma},
    )
