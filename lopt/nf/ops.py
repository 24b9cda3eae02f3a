"""The array operations of a UNF layer: fold fixed axes, reduce inputs, place outputs.

An input tensor is *folded* (its fixed axes joined to the channels), *reduced* (diagonals
over a partition's blocks, means over the blocks not kept) and, after the matmul, each
group's output is *placed* in its output tensor (broadcast over the axes it does not
carry, restricted to diagonals) and the tensor *unfolded* again. Every function works on
one tensor's :class:`~lopt.nf.plan.TensorLayout`; :func:`all_reductions` and
:func:`embed_sum` share work between the reductions and placements of one plan.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lopt.nf.plan import Group, Plan, Reduction, TensorLayout, einsum_letters
from lopt.nf.xla_boundary import computed_once, computed_once_if_large, materialize_if_large

Array = jax.Array

_CHANNEL = "Z"  # einsum letter of the channel axis; never produced by einsum_letters below


def fold(tensor: Array, layout: TensorLayout) -> Array:
    """``(*shape, C) -> (*permuted_shape, F * C)``: fixed axes join the channels."""
    if not layout.fixed:
        return tensor
    order = (*layout.permuted, *layout.fixed, tensor.ndim - 1)
    moved = jnp.transpose(tensor, order)
    return moved.reshape((*layout.permuted_shape, -1))


def unfold(tensor: Array, layout: TensorLayout, features: int) -> Array:
    """Inverse of :func:`fold` for an output with ``features`` channels."""
    if not layout.fixed:
        return tensor
    fixed_shape = tuple(layout.shape[axis] for axis in layout.fixed)
    expanded = tensor.reshape((*layout.permuted_shape, *fixed_shape, features))
    order = (*layout.permuted, *layout.fixed)
    inverse = np.argsort(order).tolist()
    return jnp.transpose(expanded, (*inverse, len(order)))


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
            :func:`~lopt.nf.xla_boundary.materialize`): XLA's dot emitter reshapes that
            output itself, and a second reshape of it is a copy kernel (one per shape it
            is read in).

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


def reduce(tensor: Array, reduction: Reduction, layout: TensorLayout) -> Array:
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


def all_reductions(folded: Sequence[Array], plan: Plan) -> dict[Reduction, Array]:
    """Every reduction of the plan, each computed once and from the cheapest source.

    A mean over a set of axes is taken from an already computed mean over the largest
    subset of them, not from the full tensor: few reductions read each full input, so
    XLA fuses the input's producer (the previous layer's sum of broadcasts) into few
    consumers instead of recomputing it for every reduction.

    Args:
        folded: the plan's tensors, folded (see :func:`fold`), ``(*permuted_shape, C)``.
        plan: the plan.

    Returns:
        Every reduction of ``plan.reductions`` (``kept`` sorted), as :func:`reduce` gives it.
    """
    done: dict[Reduction, Array] = {}
    averaged_of = {
        reduction: frozenset(range(len(reduction.partition))) - set(reduction.kept)
        for reduction in plan.reductions
    }
    for reduction in sorted(plan.reductions, key=lambda r: (r.tensor, len(averaged_of[r]))):
        layout = plan.tensors[reduction.tensor]
        if any(len(block) > 1 for block in reduction.partition):
            done[reduction] = reduce(folded[reduction.tensor], reduction, layout)
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
            base, [remaining.index(axis) for axis in todo], 1.0 / count, materialize_if_large
        )
    return done


Placement = tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]
"""How a group's output enters its tensor: the output's shape without channels (one
entry per carried block), the shape it is reshaped to (size one on broadcast axes), and
the multi-axis blocks whose diagonal it is restricted to."""


def placement(group: Group, layout: TensorLayout) -> Placement:
    """The :data:`Placement` of ``group``'s output in its tensor of layout ``layout``."""
    shape = layout.permuted_shape
    firsts = [group.partition[index][0] for index in group.carried]
    expanded = tuple(shape[axis] if axis in firsts else 1 for axis in range(len(shape)))
    diagonals = tuple(block for block in group.partition if len(block) > 1)
    return tuple(shape[axis] for axis in firsts), expanded, diagonals


def place(z: Array, placement: Placement, shape: tuple[int, ...]) -> Array:
    """Puts one group's output ``z`` (``(*carried_shape, C)``) in a ``(*shape, C)`` tensor."""
    _, expanded, diagonals = placement
    out = jnp.broadcast_to(z.reshape((*expanded, z.shape[-1])), (*shape, z.shape[-1]))
    for block in diagonals:
        out = out * _diagonal_mask(shape, block).astype(out.dtype)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def embed_sum(zs: tuple[Array, ...], placements: tuple[Placement, ...], shape: tuple[int, ...]):
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
    for z, group_placement in zip(zs, placements, strict=True):
        _, expanded, diagonals = group_placement
        if diagonals:
            masked.append(place(z, group_placement, shape))
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
    return embed_sum(zs, placements, shape), None


def _embed_sum_bwd(placements, shape, residual, g):
    del residual
    if len(shape) > 1:
        # read in several shapes below: computed once (the activation's derivative
        # recomputes the forward sum of broadcasts), see materialize
        g = computed_once(g)
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
            # read in several shapes, see all_reductions
            summed = sum_axes(sums[base], todo, share=computed_once_if_large)
            sums[axes] = summed
        grads[index] = summed.reshape((*carried_shape, g.shape[-1]))
    return (tuple(grads),)


embed_sum.defvjp(_embed_sum_fwd, _embed_sum_bwd)
