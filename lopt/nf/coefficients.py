"""Where a :class:`~lopt.nf.UNFLinear`'s basis coefficients sit in its parameters.

The layer stores one kernel per plan source, its users' coefficient blocks stacked
(:func:`kernel_blocks`), over the stacked plan (:func:`~lopt.nf.stacking.stacked_plan`).
:func:`term_coefficients` reads every basis term's coefficients back out, per leaf pair
of the unstacked weight space.
"""

from __future__ import annotations

from typing import Any

import jax

from lopt.nf import spec as nfspec
from lopt.nf.plan import Group, Plan, Term
from lopt.nf.stacking import Members, Orders, stacked_plan

Array = jax.Array
PyTree = Any
AxisOrder = tuple[int, ...] | None


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


def _part(block: slice, position: int, count: int) -> slice:
    """The ``position``-th of ``count`` equal parts of ``block`` (one leaf of a stack)."""
    width = (block.stop - block.start) // count
    return slice(block.start + position * width, block.start + (position + 1) * width)


def _leaf_axis(order: AxisOrder, position: int) -> int:
    # a stack's axis ``position`` is axis ``order[position]`` of a transposed leaf
    return position if order is None else order[position]


def _leaf_partition(partition: frozenset, out_order: AxisOrder, in_order: AxisOrder) -> frozenset:
    """A stacked term's partition, its axes renamed to those of the leaves it joins."""
    orders = {"o": out_order, "i": in_order}
    return frozenset(
        frozenset((side, _leaf_axis(orders[side], position)) for side, position in block)
        for block in partition
    )


def _term_kernels(
    kernel: Array,
    out_rows: slice,
    columns: slice,
    term: Term,
    out_leaf: tuple[int, AxisOrder],
    members: Members,
    orders: Orders,
) -> dict[tuple, Array]:
    """One stacked term's channel maps from output leaf ``out_leaf`` to each input leaf.

    Args:
        kernel: the ``(out, in)`` kernel holding the term.
        out_rows: the output leaf's rows in ``kernel``.
        columns: the term's columns in ``kernel``, all its input leaves together.
        term: the term.
        out_leaf: the output leaf's index and its axis order in its stack.
        members: the stacked plan's leaf indices per tensor.
        orders: the stacked plan's axis orders per tensor.

    Returns:
        ``(F_in C_in, F_out features)`` maps keyed as :func:`term_coefficients` keys them.
    """
    out_index, out_order = out_leaf
    in_members = members[term.reduction.tensor]
    in_orders = orders[term.reduction.tensor]
    kernels = {}
    for in_position, (in_leaf, in_order) in enumerate(zip(in_members, in_orders, strict=True)):
        in_columns = _part(columns, in_position, len(in_members))
        partition = _leaf_partition(term.partition, out_order, in_order)
        kernels[(out_index, in_leaf, partition)] = kernel[out_rows, in_columns].T
    return kernels


def _bias_partition(group: Group, out_order: AxisOrder) -> tuple[tuple[int, ...], ...]:
    """A group's output partition, in the axes of an output leaf of its stack."""
    return tuple(
        sorted(tuple(sorted(_leaf_axis(out_order, p) for p in block)) for block in group.partition)
    )


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
    kernels, biases = {}, {}
    for out, (out_members, out_orders) in enumerate(zip(members, orders, strict=True)):
        bias = params.get(f"bias_{out}")
        bias_row = 0
        for group, name, rows, columns in kernel_blocks(plan, out, in_channels, features):
            for out_position, out_leaf in enumerate(zip(out_members, out_orders, strict=True)):
                out_rows = _part(rows, out_position, len(out_members))
                for term, term_columns in zip(group.terms, columns, strict=True):
                    kernels.update(
                        _term_kernels(
                            params[name], out_rows, term_columns, term, out_leaf, members, orders
                        )
                    )
                if group.has_bias and bias is not None:
                    bias_columns = _part(slice(0, bias.shape[-1]), out_position, len(out_members))
                    bias_key = (out_leaf[0], _bias_partition(group, out_leaf[1]))
                    biases[bias_key] = bias[bias_row, bias_columns]
            bias_row += group.has_bias
    return kernels, biases
