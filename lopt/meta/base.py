"""The estimator interface shared by every meta-gradient estimator, and helpers they share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.meta.population import Unroller
from lopt.meta.tree_utils import all_finite
from lopt.meta.tree_utils import broadcast_theta as broadcast_theta
from lopt.meta.tree_utils import tree_cosine as tree_cosine
from lopt.meta.tree_utils import weighted_group_sum as weighted_group_sum

PyTree = Any


class EstimateInfo(NamedTuple):
    """Scalar diagnostics of one meta-gradient estimate.

    Attributes:
        meta_loss: float32, mean inner training loss over the unroll (finite values only).
        objective: float32, the unroll's meta-objective averaged over the particles that
            entered the estimate.
        num_episodes_ended: int32, inner episodes (per group) that reached their length.
        num_nonfinite: int32, groups (pairs for antithetic estimators) masked out of the
            estimate because a member produced a non-finite loss or gradient; they are reset.
        half_cosine: float32, the cosine between the estimates of the population's two
            halves (groups ``< G/2`` and the rest): near 0 the estimate is mostly noise, near
            1 both halves agree. NaN when an estimator does not report it.
    """

    meta_loss: jax.Array
    objective: jax.Array
    num_episodes_ended: jax.Array
    num_nonfinite: jax.Array
    # numpy, not jnp: a jnp default would start JAX's backend on import, which must wait
    # for jax.distributed.initialize in a multi-process run.
    half_cosine: jax.Array = np.float32(np.nan)


class Estimator(NamedTuple):
    """A meta-gradient estimator. The trainer only ever calls these fields.

    :func:`~lopt.meta.make_meta_trainer` hands an estimator ``theta`` as one flat vector
    ``(D,)``, with an unroller whose ``unroll`` takes one such vector per particle
    (:mod:`lopt.meta.ravel`).

    Attributes:
        init: ``(key, theta, unroller) -> state``: the estimator's full state (a pytree of
            arrays: populations, accumulators, PRNG keys).
        estimate: ``(theta, state, unroller) -> (grad, state, info)``: an estimate of the
            gradient of the meta-objective w.r.t. ``theta`` (same structure), the next state,
            and an :class:`EstimateInfo`. Pure, jit-able.
        inner_steps: ``unroller -> int``: particle-steps (inner steps summed over the
            population) one ``estimate`` runs, for throughput figures.
        particle_fields: names of the state's fields whose leaves all carry the particle (or
            group) axis first; these are the fields sharded across devices.
        config: JSON-serialisable description, ``{"name": ..., hyperparameters...}``.
    """

    init: Callable[..., PyTree]
    estimate: Callable[..., tuple[PyTree, PyTree, EstimateInfo]]
    inner_steps: Callable[[Unroller], int]
    particle_fields: tuple[str, ...]
    config: dict


def check_positive_int(name: str, value: Any) -> int:
    """Returns ``int(value)`` or raises ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_positive_float(name: str, value: Any) -> float:
    """Returns ``float(value)`` or raises ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def sample_perturbations(key: jax.Array, theta: PyTree, num: int, sigma: float) -> PyTree:
    """``num`` Gaussian perturbations of ``theta`` with std ``sigma``: leaves ``(num, *shape)``.

    All leaves come from one ``normal`` draw of the total size, split afterwards: every
    separate draw adds its own copy of the random-bit generator to the compiled program, and
    XLA spends about as long compiling each copy as on a whole small network.
    """
    leaves, treedef = jax.tree.flatten(theta)
    if not leaves:
        return theta
    dtype = jnp.result_type(*leaves)
    sizes = [int(np.prod(jnp.shape(leaf))) for leaf in leaves]
    flat = sigma * jax.random.normal(key, (num, sum(sizes)), dtype)
    offsets = np.cumsum([0, *sizes])
    noise = [
        flat[:, start:stop].reshape((num, *jnp.shape(leaf))).astype(jnp.result_type(leaf))
        for leaf, start, stop in zip(leaves, offsets[:-1], offsets[1:], strict=True)
    ]
    return jax.tree.unflatten(treedef, noise)


def antithetic_thetas(theta: PyTree, eps: PyTree) -> PyTree:
    """Per-particle meta-parameters ``(2G, ...)``: particle ``2g`` gets ``theta + eps[g]``,
    particle ``2g + 1`` gets ``theta - eps[g]``."""

    def pair(t: jax.Array, e: jax.Array) -> jax.Array:
        both = jnp.stack([t + e, t - e], axis=1)
        return both.reshape((-1, *both.shape[2:]))

    return jax.tree.map(pair, theta, eps)


def antithetic_differences(
    weighted: jax.Array, counted: jax.Array, num_pairs: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-pair differences of an antithetic unroll's weighted objective values.

    Args:
        weighted: float ``(K, 2G)``, per-step objective values times their weights, 0 where
            a value is not counted.
        counted: bool ``(K, 2G)``, the steps allowed into the estimate: a pair with any other
            step is left out.
        num_pairs: ``G``.

    Returns:
        ``weighted`` as ``(K, G, 2)`` (member ``+`` first), bool ``(G,)`` valid pairs, and
        ``(K, G)`` differences ``+`` minus ``-`` (0 for pairs left out).
    """
    num_steps = weighted.shape[0]
    weighted = weighted.reshape(num_steps, num_pairs, 2)
    valid = counted.reshape(num_steps, num_pairs, 2).all(axis=(0, 2))
    diff = jnp.where(valid, weighted[..., 0] - weighted[..., 1], 0.0)
    return weighted, valid, diff


def leading_all_finite(tree: PyTree) -> jax.Array:
    """bool ``(N,)``: every entry of particle/group ``n`` of every leaf is finite (the
    per-particle case of :func:`lopt.meta.tree_utils.all_finite`, under its older name)."""
    return all_finite(tree, leading_dims=1)


def first_half(num_groups: int) -> jax.Array:
    """bool ``(num_groups,)``: the groups of the population's first half."""
    return jnp.arange(num_groups) < num_groups // 2


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` where ``mask`` (0 when nothing is selected)."""
    total = jnp.where(mask, values, 0.0).sum()
    return total / jnp.maximum(mask.sum(), 1)
