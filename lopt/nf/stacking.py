"""Layouts of a weight-space feature tree that layers compute in.

A feature tree is a pytree matching a permutation spec whose leaves carry one trailing
channel axis, ``(*tensor_shape, C)``. Layers read it in one of three layouts:

* :func:`plan_for`: the leaves as they are, with the plan over them;
* :func:`stack_features`: leaves with the same axes stacked into one tensor
  (:class:`StackedFeatures`, the layout :class:`~lopt.nf.UNFLinear` computes in);
* :func:`to_matrix`: every entry of every leaf as one row of an ``(N, C)`` matrix.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lopt.nf import spec as nfspec
from lopt.nf.plan import Plan, compile_plan

Array = jax.Array
PyTree = Any


def plan_for(spec: nfspec.Spec, x: PyTree) -> Plan:
    """Validates ``x`` (a feature tree with a trailing channel axis) and returns its plan."""
    nfspec.validate(spec, x, channel_axis=True)
    leaves = nfspec.spec_leaves_with_paths(spec)
    tensors = jax.tree_util.tree_leaves(x)
    return compile_plan(
        tuple(path for path, _ in leaves),
        tuple(axes for _, axes in leaves),
        tuple(tuple(tensor.shape[:-1]) for tensor in tensors),
    )


Members = tuple[tuple[int, ...], ...]
"""For each tensor of a stacked plan, the indices of the leaves stacked into it."""

Orders = tuple[tuple[tuple[int, ...] | None, ...], ...]
"""For each tensor of a stacked plan and each of its leaves, the axis order that turns the
leaf into the stack's orientation (``None``: the leaf's own)."""


def _axis_order(axes: tuple, target: tuple) -> tuple[int, ...] | None:
    """The order of ``axes`` that spells ``target`` (repeated ids matched in turn)."""
    if axes == target:
        return None
    remaining = list(range(len(axes)))
    order = []
    for perm_id in target:
        position = next(p for p in remaining if axes[p] == perm_id)
        remaining.remove(position)
        order.append(position)
    return tuple(order)


def stacked_plan(spec: nfspec.Spec, x: PyTree) -> tuple[Plan, Members, Orders]:
    """The plan :class:`~lopt.nf.UNFLinear` runs: leaves with the same axes stacked into one.

    Leaves without fixed axes whose spec tuples hold the same ids, in any order (the layer
    norms and biases along a transformer's residual stream, a block's query and key, an
    embedding and the transposed readout), are stacked along a new leading axis that no
    permutation acts on, each transposed to the first one's axis order. Which leaves stack
    depends on the spec alone, so the layer's parameter names do too. The maximal layer
    over the stacked space is the same function class with the same parameter count (a
    fixed axis is mixed densely over channels, exactly the per-pair terms between its
    members, and a transpose maps a pair's terms one to one), but it runs each reduction,
    matmul and embedding once per stack instead of once per leaf.

    Returns:
        The plan over the stacked tensors and, per stacked tensor, its leaf indices and
        the axis order of each.
    """
    nfspec.validate(spec, x, channel_axis=True)
    leaves = nfspec.spec_leaves_with_paths(spec)
    shapes = [tuple(tensor.shape[:-1]) for tensor in jax.tree_util.tree_leaves(x)]
    by_layout: dict[tuple, list[int]] = {}
    for index, ((_, axes), shape) in enumerate(zip(leaves, shapes, strict=True)):
        if None in axes:
            key = (index,)
        else:
            key = tuple(sorted(Counter(zip(axes, shape, strict=True)).items(), key=repr))
        by_layout.setdefault(key, []).append(index)
    paths, all_axes, all_shapes, orders = [], [], [], []
    for members in by_layout.values():
        (_, axes), shape = leaves[members[0]], shapes[members[0]]
        stacked = len(members) > 1
        paths.append(" + ".join(leaves[index][0] for index in members))
        all_axes.append((None, *axes) if stacked else axes)
        all_shapes.append((len(members), *shape) if stacked else shape)
        orders.append(tuple(_axis_order(leaves[index][1], axes) for index in members))
    plan = compile_plan(tuple(paths), tuple(all_axes), tuple(all_shapes))
    return plan, tuple(tuple(members) for members in by_layout.values()), tuple(orders)


def _transpose_leaf(leaf: Array, order: tuple[int, ...] | None) -> Array:
    return leaf if order is None else jnp.transpose(leaf, (*order, len(order)))


def _stack(leaves: Sequence[Array], indices: Sequence[int], orders: Sequence) -> Array:
    if len(indices) == 1:
        return leaves[indices[0]]
    pairs = zip(indices, orders, strict=True)
    return jnp.stack([_transpose_leaf(leaves[index], order) for index, order in pairs])


def _unstack(stacked: Sequence[Array], members: Members, orders: Orders) -> list[Array]:
    """Per-leaf arrays, in leaf order, from the stacked tensors' arrays."""
    leaves: dict[int, Array] = {}
    for value, indices, member_orders in zip(stacked, members, orders, strict=True):
        if len(indices) == 1:
            leaves[indices[0]] = value
            continue
        for position, (index, order) in enumerate(zip(indices, member_orders, strict=True)):
            inverse = None if order is None else tuple(np.argsort(order).tolist())
            leaves[index] = _transpose_leaf(value[position], inverse)
    return [leaves[index] for index in range(len(leaves))]


@flax.struct.dataclass
class StackedFeatures:
    """A feature tree in the layout :class:`~lopt.nf.UNFLinear` computes in.

    See :func:`stacked_plan`. Build it with :func:`stack_features`, read it back with
    :func:`unstack_features`. A stack of equivariant layers (and the activations between
    them, which map over it as a pytree) passes it along, so leaves are stacked once, not
    once per layer.

    Attributes:
        tensors: per stacked tensor ``(members, *shape, C)`` (``(*shape, C)`` for a leaf of
            its own), in the plan's order.
        plan: the plan over the stacked tensors.
        members: per stacked tensor, the leaf indices it holds.
        orders: per stacked tensor, each leaf's axis order in it (see :func:`stacked_plan`).
        treedef: the structure of the feature tree.
        spec_axes: every leaf's spec tuple, to check a layer's spec against.
    """

    tensors: tuple[Array, ...]
    plan: Plan = flax.struct.field(pytree_node=False)
    members: Members = flax.struct.field(pytree_node=False)
    orders: Orders = flax.struct.field(pytree_node=False)
    treedef: Any = flax.struct.field(pytree_node=False)
    spec_axes: tuple = flax.struct.field(pytree_node=False)


def spec_axes(spec: nfspec.Spec) -> tuple:
    """Every leaf's spec tuple, in leaf order (what :attr:`StackedFeatures.spec_axes` holds)."""
    return tuple(axes for _, axes in nfspec.spec_leaves_with_paths(spec))


def stack_features(spec: nfspec.Spec, x: PyTree) -> StackedFeatures:
    """Validates ``x`` against ``spec`` and stacks its leaves with the same axes."""
    plan, members, orders = stacked_plan(spec, x)
    leaves, treedef = jax.tree_util.tree_flatten(x)
    return StackedFeatures(
        tensors=tuple(
            _stack(leaves, indices, member_orders)
            for indices, member_orders in zip(members, orders, strict=True)
        ),
        plan=plan,
        members=members,
        orders=orders,
        treedef=treedef,
        spec_axes=spec_axes(spec),
    )


def unstack_features(stacked: StackedFeatures) -> PyTree:
    """The feature tree held by ``stacked``."""
    leaves = _unstack(stacked.tensors, stacked.members, stacked.orders)
    return jax.tree_util.tree_unflatten(stacked.treedef, leaves)


def to_matrix(x: PyTree) -> tuple[Array, Callable[[Array], PyTree]]:
    """Stacks every entry of a feature tree into one ``(N, C)`` matrix.

    Returns:
        The matrix and a function mapping an ``(N, C')`` matrix back to a tree with the
        same tensor shapes and ``C'`` channels.
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    if not leaves:
        raise ValueError("the feature tree has no tensors")
    channels = {leaf.shape[-1] for leaf in leaves}
    if len(channels) != 1:
        raise ValueError(f"all tensors must have the same channel count, got {sorted(channels)}")
    shapes = [leaf.shape[:-1] for leaf in leaves]
    sizes = [math.prod(shape) for shape in shapes]
    matrix = jnp.concatenate(
        [leaf.reshape(size, -1) for leaf, size in zip(leaves, sizes, strict=True)]
    )
    offsets = np.cumsum(sizes)[:-1].tolist()

    def from_matrix(values: Array) -> PyTree:
        parts = jnp.split(values, offsets, axis=0)
        return jax.tree_util.tree_unflatten(
            treedef,
            [
                part.reshape((*shape, values.shape[-1]))
                for part, shape in zip(parts, shapes, strict=True)
            ],
        )

    return matrix, from_matrix
