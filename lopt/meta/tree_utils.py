"""Pytree helpers of meta-training: selecting, finiteness, norms, weighted sums.

Every function here is pure and jit-able and treats a pytree as one value: a mask or flag
chooses between whole trees, a norm or cosine sees the tree as one vector.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def tree_select(mask: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """``jnp.where`` over matching pytrees, with ``mask`` indexing the leaves' leading axes.

    Args:
        mask: bool, shape ``()`` (choose whole trees) or ``(N,)`` (choose per particle).
        on_true: pytree whose leaves start with ``mask``'s shape.
        on_false: pytree of the same structure and shapes.

    Returns:
        A pytree of that structure: ``on_true``'s entries where ``mask``, else ``on_false``'s.
    """

    def select(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b)

    return jax.tree.map(select, on_true, on_false)


def all_finite(tree: PyTree, leading_dims: int = 0) -> jax.Array:
    """Whether every entry of ``tree`` is finite, per index of the leaves' leading axes.

    Args:
        tree: a pytree of arrays.
        leading_dims: how many leading axes (shared by every leaf) to keep: 0 for one flag
            for the whole tree, 1 for one flag per particle or group.

    Returns:
        bool, shape ``leaf.shape[:leading_dims]``; ``True`` for a tree without leaves.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    flags = [jnp.isfinite(x).reshape((*x.shape[:leading_dims], -1)).all(axis=-1) for x in leaves]
    return jnp.stack(flags).all(axis=0)


def global_norm(tree: PyTree) -> jax.Array:
    """Global L2 norm of ``tree``, rescaled by its largest entry first so that huge finite
    values do not overflow to inf (0 for a tree without leaves)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros(())
    largest = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
    safe = jnp.where((largest > 0) & jnp.isfinite(largest), largest, 1.0)
    total = sum(jnp.sum(jnp.square(x / safe)) for x in leaves)
    return jnp.where(jnp.isfinite(largest), safe * jnp.sqrt(total), largest)


def broadcast_theta(theta: PyTree, num: int) -> PyTree:
    """``theta`` repeated along a new leading axis of size ``num``."""
    return jax.tree.map(lambda t: jnp.broadcast_to(t, (num, *jnp.shape(t))), theta)


def weighted_group_sum(weights: jax.Array, tree: PyTree) -> PyTree:
    """``sum_g weights[g] * tree[g]`` for every leaf (leaves with leading axis ``G``)."""
    return jax.tree.map(lambda x: jnp.tensordot(weights.astype(x.dtype), x, axes=1), tree)


def tree_cosine(a: PyTree, b: PyTree) -> jax.Array:
    """Cosine between two pytrees seen as vectors (NaN if either is zero)."""
    dot = sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    norm = lambda t: jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(t)))
    denominator = norm(a) * norm(b)
    return jnp.where(denominator > 0, dot / denominator, jnp.nan).astype(jnp.float32)
