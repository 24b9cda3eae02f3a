"""Truncated backpropagation through time.

Each estimate differentiates the objective of one ``K``-step truncation of every particle
w.r.t. theta, holding the state the truncation starts from constant (it is the result of
earlier truncations and gets no gradient). The gradient ignores how theta shaped that
incoming state, so it is biased towards short horizons, and memory grows with ``K``.

Gradients are taken per particle (theta is broadcast to one copy per particle and
differentiated as a whole), so a particle whose loss or gradient is non-finite is masked out
of the mean without its NaNs reaching anyone else's gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.meta.base import EstimateInfo, Estimator, check_positive_int, first_half, masked_mean
from lopt.meta.population import ParticleState, StepRecord, Unroller
from lopt.meta.tree_utils import (
    all_finite,
    broadcast_theta,
    tree_cosine,
    tree_select,
    weighted_group_sum,
)

PyTree = Any


class TBPTTState(NamedTuple):
    """State of the TBPTT estimator.

    Attributes:
        population: ``P`` particles, each its own group.
    """

    population: ParticleState


def tbptt(num_particles: int, truncation_length: int, *, stagger: bool = True) -> Estimator:
    """Truncated backpropagation through ``truncation_length`` inner steps.

    Args:
        num_particles: inner runs ``P`` averaged over.
        truncation_length: inner steps ``K`` per estimate.
        stagger: start particles at staggered step counters.

    Returns:
        An :class:`~lopt.meta.base.Estimator`.
    """
    num_particles = check_positive_int("num_particles", num_particles)
    truncation_length = check_positive_int("truncation_length", truncation_length)

    def init(key: jax.Array, theta: PyTree, unroller: Unroller) -> TBPTTState:
        del theta
        return TBPTTState(unroller.init_population(key, num_particles, 1, stagger))

    return Estimator(
        init=init,
        estimate=_tbptt_estimate(num_particles, truncation_length),
        inner_steps=lambda unroller: num_particles * truncation_length,
        particle_fields=("population",),
        config={
            "name": "tbptt",
            "num_particles": num_particles,
            "truncation_length": truncation_length,
            "stagger": stagger,
        },
    )


def _tbptt_estimate(
    num_particles: int, truncation_length: int
) -> Callable[..., tuple[PyTree, TBPTTState, EstimateInfo]]:
    """``Estimator.estimate`` of :func:`tbptt` (see the module docstring)."""

    def estimate(
        theta: PyTree, state: TBPTTState, unroller: Unroller
    ) -> tuple[PyTree, TBPTTState, EstimateInfo]:
        start = jax.lax.stop_gradient(state.population)

        def total_objective(
            thetas: PyTree,
        ) -> tuple[jax.Array, tuple[ParticleState, StepRecord, jax.Array]]:
            population, record = unroller.unroll(thetas, start, truncation_length)
            weights = unroller.objective.step_weights(record.ended)
            per_particle = (record.objective * weights).sum(axis=0)
            return per_particle.sum(), (population, record, per_particle)

        thetas = broadcast_theta(theta, num_particles)
        per_particle_grads, (population, record, per_particle) = jax.grad(
            total_objective, has_aux=True
        )(thetas)
        valid = record.finite.all(axis=0) & all_finite(per_particle_grads, leading_dims=1)
        num_valid = jnp.maximum(valid.sum(), 1)
        safe = tree_select(valid, per_particle_grads, jax.tree.map(jnp.zeros_like, thetas))
        grad = weighted_group_sum(jnp.ones(num_particles) / num_valid, safe)
        # A particle whose gradient overflowed while its losses stayed finite is restarted
        # too, so it cannot keep feeding non-finite gradients.
        overflowed = ~valid & record.finite.all(axis=0)
        population = jax.lax.cond(
            overflowed.any(),
            lambda p: tree_select(overflowed, unroller.fresh_particles(p.key), p),
            lambda p: p,
            population,
        )
        info = EstimateInfo(
            meta_loss=masked_mean(record.loss, record.finite),
            objective=masked_mean(per_particle, valid),
            num_episodes_ended=record.ended.sum().astype(jnp.int32),
            num_nonfinite=(num_particles - valid.sum()).astype(jnp.int32),
            half_cosine=tree_cosine(
                weighted_group_sum(first_half(num_particles).astype(jnp.float32), safe),
                weighted_group_sum((~first_half(num_particles)).astype(jnp.float32), safe),
            ),
        )
        return grad, TBPTTState(population), info

    return estimate
