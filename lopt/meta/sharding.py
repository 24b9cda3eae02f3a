"""Placing a meta-training state on a device mesh: particles sharded, the rest replicated."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lopt.distributed import check_population_divides

PyTree = Any


def estimator_state_shardings(
    estimator_state: PyTree, particle_fields: tuple[str, ...], mesh: Mesh, axis: str
) -> PyTree:
    """Shardings for an estimator state: ``particle_fields`` split on ``axis``, others replicated.

    Args:
        estimator_state: the state (or its ``jax.eval_shape``), a NamedTuple.
        particle_fields: names of fields whose leaves carry the particle/group axis first.
        mesh: the device mesh.
        axis: mesh axis the particle axis is split over.

    Returns:
        A pytree of ``NamedSharding`` matching ``estimator_state``.

    Raises:
        ValueError: a particle axis is not divisible by the size of ``axis``.
    """
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {axis!r}; its axes are {mesh.axis_names}")
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec(axis))

    def particle_sharding(leaf: Any) -> NamedSharding:
        if leaf.ndim == 0:
            raise ValueError("a particle field holds a scalar; it has no particle axis to split")
        size = leaf.shape[0]
        check_population_divides(size, mesh, axis, f"a particle axis of size {size}")
        return split

    fields = getattr(estimator_state, "_fields", ())
    unknown = set(particle_fields) - set(fields)
    if unknown:
        raise ValueError(f"estimator state has no fields {sorted(unknown)}")
    shardings = [
        jax.tree.map(particle_sharding if name in particle_fields else lambda _: replicated, value)
        for name, value in zip(fields, estimator_state, strict=True)
    ]
    return type(estimator_state)(*shardings)


def replicated_shardings(tree: PyTree, mesh: Mesh) -> PyTree:
    """A fully replicated ``NamedSharding`` for every leaf of ``tree``."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda _: replicated, tree)
