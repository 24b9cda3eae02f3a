"""Permutation-equivariant layers over weight spaces, and networks stacked from them.

Every layer takes a *weight-space feature tree*: a pytree matching a permutation spec
whose leaves carry one trailing channel axis, ``(*tensor_shape, C)``, and returns the
same structure with its own number of channels.

* :class:`UNFLinear`: the maximal equivariant linear layer (UNF paper, Algorithm 1),
  run from a compiled :class:`~lopt.nf.plan.Plan`.
* :class:`PointwiseDense`: a Dense layer on the channels of every entry (Deep Sets),
  applied to all tensors at once as one ``(N, C)`` matrix.
* :class:`InvariantPool`: the mean over every permuted axis, concatenated over tensors.
* :class:`NeuralFunctional`: per-parameter layers, then equivariant layers.
* :class:`InvariantNetwork`: a neural functional, invariant pooling and an MLP head.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lopt.nf import spec as nfspec
from lopt.nf.plan import Group, Plan, Reduction, TensorLayout, compile_plan, einsum_letters

Array = jax.Array
PyTree = Any

_CHANNEL = "Z"  # einsum letter of the channel axis; never produced by einsum_letters below


def nfn_spec(spec: nfspec.Spec) -> nfspec.Spec:
    """The spec NFN uses: :class:`~lopt.nf.spec.Spatial` axes become channels (``None``)."""
    return nfspec.map_ids(
        spec, lambda perm_id: None if isinstance(perm_id, nfspec.Spatial) else perm_id
    )


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
    """The plan :class:`UNFLinear` runs: leaves with the same axes stacked into one.

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


def _fold(tensor: Array, layout: TensorLayout) -> Array:
    """``(*shape, C) -> (*permuted_shape, F * C)``: fixed axes join the channels."""
    if not layout.fixed:
        return tensor
    order = (*layout.permuted, *layout.fixed, tensor.ndim - 1)
    moved = jnp.transpose(tensor, order)
    return moved.reshape((*layout.permuted_shape, -1))


def _unfold(tensor: Array, layout: TensorLayout, features: int) -> Array:
    """Inverse of :func:`_fold` for an output with ``features`` channels."""
    if not layout.fixed:
        return tensor
    fixed_shape = tuple(layout.shape[axis] for axis in layout.fixed)
    expanded = tensor.reshape((*layout.permuted_shape, *fixed_shape, features))
    order = (*layout.permuted, *layout.fixed)
    inverse = np.argsort(order).tolist()
    return jnp.transpose(expanded, (*inverse, len(order)))


@jax.custom_batching.custom_vmap
def _computed_once(x: Array) -> Array:
    """``x``, as one buffer that every reader shares (see :func:`_materialize`).

    A ``cond`` on a predicate XLA cannot evaluate at compile time is a boundary it does
    not fuse across: the operand is computed once, into a buffer. The predicate (an entry
    of ``x`` above +inf) is never true, so the result is always ``x``; the other branch
    only has to differ from the identity, or XLA would drop the ``cond``.
    """
    if x.size == 0:
        return x
    never = x.reshape(-1)[0] > jnp.inf
    return jax.lax.cond(never, lambda v: jnp.full_like(v, jnp.nan), lambda v: v, x)


@_computed_once.def_vmap
def _computed_once_vmap(axis_size: int, in_batched: list[bool], x: Array) -> tuple[Array, bool]:
    # vmap turns a cond on a batched predicate into a select, which XLA fuses through;
    # the whole batch is one buffer here, so one unbatched predicate serves it
    del axis_size
    return _computed_once(x), in_batched[0]


@jax.custom_vjp
def _materialize(x: Array) -> Array:
    """``x``, computed once, and its cotangent too.

    A layer's input is read in several shapes (one per axis it is reduced over, and flat
    for the full-size matmul). XLA's CPU fusion copies a cheap elementwise producer (the
    previous layer's sum of broadcasts and activation) into every consumer of another
    shape, so without this the previous layer's output is recomputed once per reading, in
    strided loops. Measured on the CNN weight space: forward 13x -> 6x Deep Sets with a
    product with an identity matrix as the boundary, and 15% less again with a ``cond``.
    """
    return _computed_once(x)


def _materialize_fwd(x: Array) -> tuple[Array, None]:
    return _computed_once(x), None


def _materialize_bwd(residual: None, g: Array) -> tuple[Array]:
    del residual
    return (_computed_once(g),)


_materialize.defvjp(_materialize_fwd, _materialize_bwd)


_SHARED_SIZE = 1 << 16
"""Entries from which a reduction is computed into one shared buffer (see
:func:`_all_reductions`). On the CNN weight space the conv kernels' reductions over a
spatial axis reach 400,000 entries, and sharing them made the forward 4-10% faster and
forward+backward 3-5%. Copies of small reductions cost little, while every boundary is
one more kernel to run and compile."""


def _materialize_if_large(x: Array) -> Array:
    return _materialize(x) if x.size >= _SHARED_SIZE else x


def _computed_once_if_large(x: Array) -> Array:
    return _computed_once(x) if x.size >= _SHARED_SIZE else x


def sum_axes(
    x: Array,
    axes: Sequence[int],
    scale: float = 1.0,
    share: Callable[[Array], Array] | None = None,
) -> Array:
    """Sums ``x`` over ``axes``, times ``scale``, with batched dots against constants.

    XLA's CPU reductions are slow when a small reduced extent meets a large kept minor
    extent (summing the 3x3 taps of a conv kernel's features ran ~50x slower than this),
    and the gradient of a broadcast is such a reduction. A dot whose batch and contracted
    axes lead needs no transposes, and its transpose (the gradient) is a broadcast. The
    scale rides in the constant, so a mean costs no separate kernel.

    Args:
        x: any array.
        axes: axes to sum over; runs of adjacent axes are summed as one.
        scale: factor applied to the sum (``1 / count`` for a mean).
        share: an identity applied to the last dot's output before it is reshaped, such
            as one that computes a large output into one shared buffer (see
            :func:`_materialize`): XLA's dot emitter reshapes that output itself, and a
            second reshape of it is a copy kernel (one per shape it is read in).

    Returns:
        ``scale`` times the sum of ``x`` over ``axes``, without those axes.
    """
    runs: list[list[int]] = []
    for axis in sorted(set(axes)):
        if runs and runs[-1][1] == axis:
            runs[-1][1] = axis + 1
        else:
            runs.append([axis, axis + 1])
    if not runs:
        return x * scale if scale != 1.0 else x
    for index, (start, stop) in enumerate(reversed(runs)):
        shape = x.shape
        outer, inner = math.prod(shape[:start]), math.prod(shape[start:stop])
        grouped = x.reshape(outer, inner, math.prod(shape[stop:]))
        weights = jnp.full((outer, inner), scale if index == 0 else 1.0, x.dtype)
        summed = jax.lax.dot_general(weights, grouped, (((1,), (1,)), ((0,), (0,))))
        if share is not None and index == len(runs) - 1:
            summed = share(summed)
        x = summed.reshape(shape[:start] + shape[stop:])
    return x


def _reduce(tensor: Array, reduction: Reduction, layout: TensorLayout) -> Array:
    """Diagonals over the reduction's blocks, mean over the blocks not kept.

    Args:
        tensor: folded input, ``(*permuted_shape, C)``.
        reduction: which blocks to take diagonals of and which to keep; ``kept`` sorted.
        layout: the input tensor's layout.

    Returns:
        ``(*kept_block_sizes, C)`` with the kept blocks in increasing order.
    """
    if any(len(block) > 1 for block in reduction.partition):
        # one axis per block, in block order (blocks are sorted by their first axis)
        letters = einsum_letters(len(reduction.partition))
        block_of = {}
        for letter, block in zip(letters, reduction.partition, strict=True):
            for position in block:
                block_of[position] = letter
        source = "".join(block_of[position] for position in range(len(layout.ids)))
        tensor = jnp.einsum(f"{source}{_CHANNEL}->{letters}{_CHANNEL}", tensor)
    averaged = [index for index in range(len(reduction.partition)) if index not in reduction.kept]
    if not averaged:
        return tensor
    count = math.prod(layout.permuted_shape[reduction.partition[i][0]] for i in averaged)
    return sum_axes(tensor, averaged, 1.0 / count)


@functools.lru_cache(maxsize=1024)
def _diagonal_mask(shape: tuple[int, ...], block: tuple[int, ...]) -> np.ndarray:
    """A 0/1 array, size ``n`` on the block's axes and 1 elsewhere, one where they are equal."""
    size = shape[block[0]]
    mask_shape = [size if axis in block else 1 for axis in range(len(shape))]
    grids = [
        np.arange(size).reshape([size if axis == position else 1 for axis in range(len(shape))])
        for position in block
    ]
    equal = np.ones(mask_shape, dtype=bool)
    for grid in grids[1:]:
        equal = equal & (grid == grids[0])
    return equal.astype(np.float32)[..., None]


def _all_reductions(folded: Sequence[Array], plan: Plan) -> dict[Reduction, Array]:
    """Every reduction of the plan, each computed once and from the cheapest source.

    A mean over a set of axes is taken from an already computed mean over the largest
    subset of them, not from the full tensor: few reductions read each full input, so
    XLA fuses the input's producer (the previous layer's sum of broadcasts) into few
    consumers instead of recomputing it for every reduction.
    """
    done: dict[Reduction, Array] = {}
    averaged_of = {
        reduction: frozenset(range(len(reduction.partition))) - set(reduction.kept)
        for reduction in plan.reductions
    }
    for reduction in sorted(plan.reductions, key=lambda r: (r.tensor, len(averaged_of[r]))):
        layout = plan.tensors[reduction.tensor]
        if any(len(block) > 1 for block in reduction.partition):
            done[reduction] = _reduce(folded[reduction.tensor], reduction, layout)
            continue
        averaged = averaged_of[reduction]
        base, base_averaged = folded[reduction.tensor], frozenset()
        for other, value in done.items():
            if (
                other.tensor == reduction.tensor
                and other.partition == reduction.partition
                and averaged_of[other] <= averaged
                and len(averaged_of[other]) > len(base_averaged)
            ):
                base, base_averaged = value, averaged_of[other]
        remaining = [axis for axis in range(len(layout.ids)) if axis not in base_averaged]
        todo = sorted(averaged - base_averaged)
        count = math.prod(layout.permuted_shape[axis] for axis in todo)
        # a large reduction is read in several shapes too (by later reductions and by its
        # source's matmul): one shared buffer, not a copy per shape
        done[reduction] = sum_axes(
            base, [remaining.index(axis) for axis in todo], 1.0 / count, _materialize_if_large
        )
    return done


Placement = tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]
"""How a group's output enters its tensor: the output's shape without channels (one
entry per carried block), the shape it is reshaped to (size one on broadcast axes), and
the multi-axis blocks whose diagonal it is restricted to."""


def _placement(group: Group, layout: TensorLayout) -> Placement:
    shape = layout.permuted_shape
    firsts = [group.partition[index][0] for index in group.carried]
    expanded = tuple(shape[axis] if axis in firsts else 1 for axis in range(len(shape)))
    diagonals = tuple(block for block in group.partition if len(block) > 1)
    return tuple(shape[axis] for axis in firsts), expanded, diagonals


def _place(z: Array, placement: Placement, shape: tuple[int, ...]) -> Array:
    _, expanded, diagonals = placement
    out = jnp.broadcast_to(z.reshape((*expanded, z.shape[-1])), (*shape, z.shape[-1]))
    for block in diagonals:
        out = out * _diagonal_mask(shape, block).astype(out.dtype)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _embed_sum(zs: tuple[Array, ...], placements: tuple[Placement, ...], shape: tuple[int, ...]):
    """``Σ_g place(z_g)``: every group's output put in its tensor's ``(*shape, C)``.

    Carried blocks index the output (on the diagonal for blocks of several axes); the
    other blocks broadcast (again on the diagonal for blocks of several axes).

    The gradient is written by hand. Left to autodiff, every group's gradient is an XLA
    reduction of the full cotangent: slow on CPU for the small extents of conv taps, and
    XLA recomputes the cotangent's fused producer for each of them. Here every group's
    gradient is a :func:`sum_axes` dot taken from the largest sub-sum already computed.
    """
    # Each plain contribution is added into the smallest other one whose axes contain its
    # own (one small broadcast-add each), so the full-size sum reads few inputs.
    pending: dict[tuple[int, ...], Array] = {}
    masked = []
    for z, placement in zip(zs, placements, strict=True):
        _, expanded, diagonals = placement
        if diagonals:
            masked.append(_place(z, placement, shape))
            continue
        value = z.reshape((*expanded, z.shape[-1]))
        pending[expanded] = pending[expanded] + value if expanded in pending else value
    full = (*shape, zs[0].shape[-1])

    def contains(large: tuple[int, ...], small: tuple[int, ...]) -> bool:
        return all(b == 1 or a == b for a, b in zip(large, small, strict=True))

    def size(expanded: tuple[int, ...]) -> int:
        return math.prod(expanded)

    for expanded in sorted(pending, key=size):
        supersets = [other for other in pending if other != expanded and contains(other, expanded)]
        if supersets:
            target = min(supersets, key=size)
            pending[target] = pending[target] + pending.pop(expanded)
    total = None
    for value in [*pending.values(), *masked]:
        value = jnp.broadcast_to(value, full)
        total = value if total is None else total + value
    return total


def _embed_sum_fwd(zs, placements, shape):
    return _embed_sum(zs, placements, shape), None


def _embed_sum_bwd(placements, shape, residual, g):
    del residual
    if len(shape) > 1:
        # read in several shapes below: computed once (the activation's derivative
        # recomputes the forward sum of broadcasts), see _materialize
        g = _computed_once(g)
    # Sums of the cotangent over axis sets, each computed from the largest cached sum
    # over a subset: few reductions read the full-size cotangent, so XLA duplicates its
    # fused producer into few consumers.
    sums: dict[frozenset[int], Array] = {frozenset(): g}
    grads: list[Array | None] = [None] * len(placements)
    summed_axes = [
        frozenset(axis for axis, size in enumerate(expanded) if size != shape[axis])
        for _, expanded, _ in placements
    ]
    for index in sorted(range(len(placements)), key=lambda i: len(summed_axes[i])):
        carried_shape, _, diagonals = placements[index]
        axes = summed_axes[index]
        if diagonals:
            masked = g
            for block in diagonals:
                masked = masked * _diagonal_mask(shape, block).astype(g.dtype)
            summed = sum_axes(masked, sorted(axes))
        else:
            base = max((done for done in sums if done <= axes), key=len)
            remaining = [axis for axis in range(len(shape)) if axis not in base]
            todo = [remaining.index(axis) for axis in axes - base]
            # read in several shapes, see _all_reductions
            summed = sum_axes(sums[base], todo, share=_computed_once_if_large)
            sums[axes] = summed
        grads[index] = summed.reshape((*carried_shape, g.shape[-1]))
    return (tuple(grads),)


_embed_sum.defvjp(_embed_sum_fwd, _embed_sum_bwd)


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
    """A feature tree in the layout :class:`UNFLinear` computes in (see :func:`stacked_plan`).

    Build it with :func:`stack_features`, read it back with :func:`unstack_features`. A
    stack of equivariant layers (and the activations between them, which map over it as a
    pytree) passes it along, so leaves are stacked once, not once per layer.

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


def _spec_axes(spec: nfspec.Spec) -> tuple:
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
        spec_axes=_spec_axes(spec),
    )


def unstack_features(stacked: StackedFeatures) -> PyTree:
    """The feature tree held by ``stacked``."""
    leaves = _unstack(stacked.tensors, stacked.members, stacked.orders)
    return jax.tree_util.tree_unflatten(stacked.treedef, leaves)


def kernel_name(source: int) -> str:
    """Name of the kernel parameter of a plan source."""
    return f"kernel_source_{source}"


def kernel_blocks(
    plan: Plan, out: int, in_channels: int, features: int
) -> list[tuple[Group, str, slice, list[slice]]]:
    """Where the coefficients of output tensor ``out`` sit in a :class:`UNFLinear`'s params.

    Each source has one kernel, stored ``(out, in)``: its rows are the output channels of
    the groups that read the source, one block after the other (in
    :attr:`Plan.source_users` order); its columns are the source's reductions' channels.

    Returns:
        For each group of ``out``: the group, its kernel's parameter name, the group's
        rows in it, and the columns of each of its terms (in ``group.terms`` order).
    """
    blocks = []
    for index, group in enumerate(plan.groups[out]):
        users = plan.source_users[group.source]
        heights = [features * plan.tensors[user].fixed_size for user, _ in users]
        position = users.index((out, index))
        start = sum(heights[:position])
        columns, column = [], 0
        for term in group.terms:
            width = in_channels * plan.tensors[term.reduction.tensor].fixed_size
            columns.append(slice(column, column + width))
            column += width
        blocks.append(
            (group, kernel_name(group.source), slice(start, start + heights[position]), columns)
        )
    return blocks


def term_coefficients(
    spec: nfspec.Spec, x: PyTree, params: PyTree, features: int
) -> tuple[dict[tuple, Array], dict[tuple, Array]]:
    """Every basis term's coefficients in a :class:`UNFLinear`'s params, per leaf pair.

    Args:
        spec: the layer's spec.
        x: a feature tree the layer accepts (only shapes are read).
        params: the layer's ``params`` collection.
        features: the layer's output channels.

    Returns:
        ``kernels[(out_leaf, in_leaf, partition)]``: the ``(F_in C_in, F_out features)``
        channel map of the basis term named by its valid partition (``F``: the product of
        a leaf's fixed axes, folded into channels); ``biases[(out_leaf, out_partition)]``:
        the ``(F_out features,)`` bias of each partition of the output leaf's axes.
    """
    plan, members, orders = stacked_plan(spec, x)
    in_channels = jax.tree_util.tree_leaves(x)[0].shape[-1]

    def part(block: slice, position: int, count: int) -> slice:
        width = (block.stop - block.start) // count
        return slice(block.start + position * width, block.start + (position + 1) * width)

    def leaf_axis(order: tuple[int, ...] | None, position: int) -> int:
        # a stack's axis ``position`` is axis ``order[position]`` of a transposed leaf
        return position if order is None else order[position]

    def leaf_partition(partition: frozenset, out_order, in_order) -> frozenset:
        orders = {"o": out_order, "i": in_order}
        return frozenset(
            frozenset((side, leaf_axis(orders[side], position)) for side, position in block)
            for block in partition
        )

    kernels, biases = {}, {}
    for out, (out_members, out_orders) in enumerate(zip(members, orders, strict=True)):
        bias_row = 0
        for group, name, rows, columns in kernel_blocks(plan, out, in_channels, features):
            for out_position, (out_leaf, out_order) in enumerate(
                zip(out_members, out_orders, strict=True)
            ):
                out_rows = part(rows, out_position, len(out_members))
                for term, term_columns in zip(group.terms, columns, strict=True):
                    in_members = members[term.reduction.tensor]
                    in_orders = orders[term.reduction.tensor]
                    for in_position, (in_leaf, in_order) in enumerate(
                        zip(in_members, in_orders, strict=True)
                    ):
                        in_columns = part(term_columns, in_position, len(in_members))
                        partition = leaf_partition(term.partition, out_order, in_order)
                        kernels[(out_leaf, in_leaf, partition)] = params[name][
                            out_rows, in_columns
                        ].T
                if group.has_bias and f"bias_{out}" in params:
                    bias_columns = part(
                        slice(0, params[f"bias_{out}"].shape[-1]), out_position, len(out_members)
                    )
                    out_partition = tuple(
                        sorted(
                            tuple(sorted(leaf_axis(out_order, p) for p in block))
                            for block in group.partition
                        )
                    )
                    biases[(out_leaf, out_partition)] = params[f"bias_{out}"][
                        bias_row, bias_columns
                    ]
            bias_row += group.has_bias
    return kernels, biases


def _scaled_normal(stddevs: np.ndarray) -> Callable:
    """A normal initializer with one standard deviation per row."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.normal(key, shape, dtype) * jnp.asarray(stddevs, dtype)[:, None]

    return init


class UNFLinear(nn.Module):
    """The maximal permutation-equivariant linear layer over a weight space.

    For the permutation spec ``spec`` and every output tensor ``ℓ`` it computes
    ``Σ_m Σ_{P valid for (ℓ, m)} basis_P(x_m) Θ_{ℓ,m,P} + Σ_{Q} bias_{ℓ,Q}``, where ``P``
    ranges over the valid partitions of the permuted axes of ``ℓ`` and ``m`` and ``Q``
    over the partitions of the axes of ``ℓ`` (the equivariant constants). Axes whose id is
    ``None`` are folded into the channels.

    Parameters: one kernel per plan source (``kernel_source_<s>``, its users' ``Θ`` blocks
    stacked, see :func:`kernel_blocks`), so every matmul reads its kernel as stored;
    one bias per tensor of the stacked plan (``bias_<t>``, a row per output partition).

    Attributes:
        spec: the permutation spec of the weight space.
        features: output channels per entry.
        use_bias: whether to add the equivariant bias.
        kernel_scale: the variance of the initial output per channel, for unit-variance
            inputs (the fan-in counts all terms of an output tensor together).
    """

    spec: Any
    features: int
    use_bias: bool = True
    kernel_scale: float = 1.0

    @nn.compact
    def __call__(self, x: PyTree) -> PyTree:
        """Applies the layer.

        Args:
            x: feature tree matching ``spec``; leaves ``(*tensor_shape, C_in)``; or the
                same as :class:`StackedFeatures` (from :func:`stack_features` with ``spec``).

        Returns:
            The same structure (stacked if ``x`` was); leaves ``(*tensor_shape, features)``.
        """
        stacked = x if isinstance(x, StackedFeatures) else stack_features(self.spec, x)
        if stacked.spec_axes != _spec_axes(self.spec):
            raise ValueError(
                "the stacked features were built for another spec than this layer's "
                f"(spec tuples {stacked.spec_axes} vs {_spec_axes(self.spec)})"
            )
        plan = stacked.plan
        folded = []
        for tensor, layout in zip(stacked.tensors, plan.tensors, strict=True):
            tensor = _fold(tensor, layout)
            folded.append(_materialize(tensor) if len(layout.ids) > 1 else tensor)
        cache = _all_reductions(folded, plan)

        def reduced(reduction: Reduction) -> Array:
            kept_sorted = tuple(sorted(reduction.kept))
            value = cache[Reduction(reduction.tensor, reduction.partition, kept_sorted)]
            if kept_sorted != reduction.kept:
                value = jnp.transpose(
                    value, (*[kept_sorted.index(b) for b in reduction.kept], value.ndim - 1)
                )
            return value

        sources = [
            jnp.concatenate([reduced(reduction) for reduction in source], axis=-1)
            for source in plan.sources
        ]
        out_channels = [self.features * layout.fixed_size for layout in plan.tensors]
        fan_in = [
            sum(sources[group.source].shape[-1] for group in groups) for groups in plan.groups
        ]

        results: dict[tuple[int, int], Array] = {}
        for index, (source, users) in enumerate(zip(sources, plan.source_users, strict=True)):
            stddevs = np.concatenate(
                [
                    np.full(out_channels[out], math.sqrt(self.kernel_scale / fan_in[out]))
                    for out, _ in users
                ]
            )
            kernel = self.param(
                kernel_name(index),
                _scaled_normal(stddevs.astype(np.float32)),
                (len(stddevs), source.shape[-1]),
                jnp.float32,
            )
            # kernel stored (out, in): its gradient then needs no transposing copy
            product = jax.lax.dot_general(
                source, kernel.astype(source.dtype), (((source.ndim - 1,), (1,)), ((), ()))
            )
            splits = np.cumsum([out_channels[out] for out, _ in users])[:-1].tolist()
            for user, part in zip(users, jnp.split(product, splits, axis=-1), strict=True):
                results[user] = part

        outputs = []
        for out, (layout, groups) in enumerate(zip(plan.tensors, plan.groups, strict=True)):
            bias = None
            if self.use_bias:
                bias = self.param(
                    f"bias_{out}",
                    nn.initializers.zeros,
                    (sum(group.has_bias for group in groups), out_channels[out]),
                    jnp.float32,
                )
            zs = []
            bias_index = 0
            for group_index, group in enumerate(groups):
                z = results[(out, group_index)]
                if bias is not None and group.has_bias:
                    z = z + bias[bias_index].astype(z.dtype)
                    bias_index += 1
                zs.append(z)
            placements = tuple(_placement(group, layout) for group in groups)
            total = _embed_sum(tuple(zs), placements, layout.permuted_shape)
            outputs.append(_unfold(total, layout, self.features))
        result = stacked.replace(tensors=tuple(outputs))
        return result if isinstance(x, StackedFeatures) else unstack_features(result)


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


class PointwiseDense(nn.Module):
    """A Dense layer on the channels of every entry, shared by all tensors (Deep Sets).

    Attributes:
        features: output channels.
    """

    features: int

    @nn.compact
    def __call__(self, x: PyTree) -> PyTree:
        matrix, from_matrix = to_matrix(x)
        return from_matrix(nn.Dense(self.features, name="dense")(matrix))


class InvariantPool(nn.Module):
    """Mean over all permuted axes of every tensor, concatenated: an invariant vector.

    Fixed (``None``) axes are not pooled: they stay as features.

    Attributes:
        spec: the permutation spec.
    """

    spec: Any

    def __call__(self, x: PyTree) -> Array:
        """Pools ``x`` (leaves ``(*tensor_shape, C)``) into a vector of ``Σ_ℓ F_ℓ C``."""
        plan = plan_for(self.spec, x)
        pooled = []
        for leaf, layout in zip(jax.tree_util.tree_leaves(x), plan.tensors, strict=True):
            folded = _fold(leaf, layout)
            pooled.append(jnp.mean(folded, axis=tuple(range(len(layout.ids)))))
        return jnp.concatenate(pooled)


_KINDS = ("unf", "nfn")


class NeuralFunctional(nn.Module):
    """Per-parameter layers followed by equivariant layers.

    Deep Sets is ``pointwise=(32, 32, 32, 1)``; the UNF paper's learned-optimizer network
    is ``pointwise=(32, 32, 32), equivariant=(1,)``; a deep UNF is
    ``equivariant=(32, 32, 32, 1)``. ``kind="nfn"`` builds NFN's layers: spatial axes
    (:class:`~lopt.nf.spec.Spatial`) become channels; on MLP weight spaces NFN and UNF
    coincide.

    Attributes:
        spec: permutation spec of the weight space.
        pointwise: widths of the per-parameter Dense layers (run on one ``(N, C)`` matrix).
        equivariant: widths of the equivariant layers that follow.
        kind: ``"unf"`` or ``"nfn"``.
        activation: applied between layers, not after the last.
        use_bias: whether layers have biases.
    """

    spec: Any
    pointwise: Sequence[int] = ()
    equivariant: Sequence[int] = ()
    kind: str = "unf"
    activation: Callable[[Array], Array] = nn.relu
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: PyTree) -> PyTree:
        """Maps a feature tree ``(*shape, C_in)`` to ``(*shape, widths[-1])``."""
        if self.kind not in _KINDS:
            raise ValueError(
                f"unknown neural functional kind {self.kind!r}; expected one of {_KINDS}"
            )
        widths = [*self.pointwise, *self.equivariant]
        if not widths:
            raise ValueError("a neural functional needs at least one layer")
        last = len(widths) - 1
        layer = 0
        spec = nfn_spec(self.spec) if self.kind == "nfn" else self.spec
        if self.equivariant:
            # stacked once, before the pointwise layers: they then produce the stacked
            # tensors directly, and no equivariant layer stacks or unstacks
            x = stack_features(spec, x)
        if self.pointwise:
            matrix, from_matrix = to_matrix(x)
            for width in self.pointwise:
                matrix = nn.Dense(width, use_bias=self.use_bias, name=f"pointwise_{layer}")(matrix)
                if layer < last:
                    matrix = self.activation(matrix)
                layer += 1
            x = from_matrix(matrix)
        for width in self.equivariant:
            x = UNFLinear(spec, width, use_bias=self.use_bias, name=f"equivariant_{layer}")(x)
            if layer < last:
                x = jax.tree_util.tree_map(self.activation, x)
            layer += 1
        return unstack_features(x) if isinstance(x, StackedFeatures) else x


class InvariantNetwork(nn.Module):
    """Predicts a property of a network from its weights, invariant to its permutations.

    Equivariant layers, then :class:`InvariantPool`, then an MLP head.

    Attributes:
        spec: permutation spec of the weight space.
        equivariant: widths of the equivariant layers (activation after each).
        head: widths of the MLP head; the last is the output size.
        pointwise: widths of per-parameter layers before the equivariant ones.
        kind: ``"unf"`` or ``"nfn"``.
        activation: between layers.
    """

    spec: Any
    equivariant: Sequence[int]
    head: Sequence[int]
    pointwise: Sequence[int] = ()
    kind: str = "unf"
    activation: Callable[[Array], Array] = nn.relu

    @nn.compact
    def __call__(self, x: PyTree) -> Array:
        """Maps a feature tree ``(*shape, C_in)`` to a vector of ``head[-1]`` outputs."""
        if not self.head:
            raise ValueError("an invariant network needs at least one head layer")
        features = NeuralFunctional(
            self.spec, self.pointwise, self.equivariant, self.kind, self.activation, name="body"
        )(x)
        features = jax.tree_util.tree_map(self.activation, features)
        spec = nfn_spec(self.spec) if self.kind == "nfn" else self.spec
        h = InvariantPool(spec)(features)
        for index, width in enumerate(self.head):
            h = nn.Dense(width, name=f"head_{index}")(h)
            if index < len(self.head) - 1:
                h = self.activation(h)
        return h
