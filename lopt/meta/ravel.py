"""The ravel boundary between estimators (theta as one vector) and inner runs (theta's pytree).

Estimators sample, perturb, accumulate and combine theta. Done on one flat vector instead of
on every leaf of theta, that is one array operation instead of one per leaf: for update
networks with dozens of parameter tensors it removes hundreds of small kernels from the
compiled outer step. Inner runs, on the other hand, need theta's pytree to call the learned
optimizer.

:func:`ravel_theta` is the one place the two meet. It ravels theta and gives the estimator an
unroller whose ``unroll`` takes one flat vector per particle and unravels each (vmapped)
before running it; the estimate comes back flat and goes through the same ``unravel``. The
trainer calls it on the state's theta in every traced function, so the unravelling is part
of the compiled program and costs nothing at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.flatten_util

from lopt.meta.population import ParticleState, StepRecord, Unroller

PyTree = Any


class FlatTheta(NamedTuple):
    """Theta as estimators see it.

    Attributes:
        vector: ``(D,)``, theta's leaves raveled and concatenated.
        unravel: ``(D,) -> theta``, the inverse map to theta's pytree.
        unroller: the unroller whose ``unroll`` takes ``thetas`` of shape ``(N, D)``, one
            flat vector per particle; every other field is the original unroller's.
    """

    vector: jax.Array
    unravel: Callable[[jax.Array], PyTree]
    unroller: Unroller


def ravel_theta(theta: PyTree, unroller: Unroller) -> FlatTheta:
    """Crosses the ravel boundary: ``theta`` as one vector, with the unroller for such vectors.

    Args:
        theta: the meta-parameter pytree.
        unroller: an unroller whose ``unroll`` takes per-particle pytrees of theta.

    Returns:
        A :class:`FlatTheta`.
    """
    vector, unravel = jax.flatten_util.ravel_pytree(theta)
    return FlatTheta(vector, unravel, unroller._replace(unroll=unravelling(unroller, unravel)))


def unravelling(
    unroller: Unroller, unravel: Callable[[jax.Array], PyTree]
) -> Callable[..., tuple[ParticleState, StepRecord]]:
    """``unroller.unroll`` taking flat per-particle thetas ``(N, D)`` in place of pytrees."""

    def unroll(
        thetas: jax.Array,
        population: ParticleState,
        num_steps: int,
        group_size: int = 1,
        reset: bool = True,
    ) -> tuple[ParticleState, StepRecord]:
        return unroller.unroll(jax.vmap(unravel)(thetas), population, num_steps, group_size, reset)

    return unroll
