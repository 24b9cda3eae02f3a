"""Compiles a permutation spec into a static plan for the maximal equivariant linear layer.

Theory (UNF paper, Algorithm 1 and Theorem 3.1). For an output tensor with permuted axes
``o = (o_1..o_k)`` and an input tensor with permuted axes ``i = (i_1..i_l)``, the
equivariant linear maps between them are spanned by the *valid partitions* of the
``k + l`` axes: set partitions whose blocks only join axes with the same permutation id.
A partition's basis map takes diagonals over input axes in one block, averages over
blocks without output axes, carries blocks that join input and output axes, and
broadcasts into blocks without input axes (on the diagonal where a block holds several
output axes). Axes with id ``None`` are not permuted: they are folded into channels,
so the layer mixes them densely, which is the maximal choice for a trivially acting axis.

Every valid partition factors into three parts:

* the *output pattern*: the partition of the output axes and which of its blocks are
  carried (all else is broadcast);
* the *input reduction*: the partition of the input axes and which of its blocks are
  kept, in the order of the carried output blocks (all else is averaged);
* the channel map ``Θ``: ``C_in -> C_out``.

A plan groups all terms (over every input tensor) by output pattern. Terms of a group
produce tensors of the same shape, so the layer concatenates their reduced inputs along
channels and applies **one** matmul per group, then embeds the result once. Each distinct
reduction of an input tensor is computed once and shared by every group that reads it.
The parameter count equals the basis size exactly: one ``C_in x C_out`` block per term.
"""

from __future__ import annotations

import dataclasses
import functools
import string
from collections.abc import Hashable, Iterator, Sequence

AxisLabel = tuple[str, int]  # ("o", position) or ("i", position) among permuted axes
Block = tuple[int, ...]  # sorted positions of permuted axes of one tensor


def set_partitions(items: Sequence) -> Iterator[list[list]]:
    """Yields every set partition of ``items`` (blocks keep the items' order)."""
    items = list(items)
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for index in range(len(partition)):
            yield [*partition[:index], [first, *partition[index]], *partition[index + 1 :]]


@functools.cache
def bell(n: int) -> int:
    """The Bell number B(n): the count of set partitions of ``n`` items."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for value in row:
            nxt.append(nxt[-1] + value)
        row = nxt
    return row[0]


def count_terms(out_ids: Sequence[Hashable], in_ids: Sequence[Hashable]) -> int:
    """Number of basis maps between two tensors: product over ids of Bell(#axes with that id)."""
    counts: dict[Hashable, int] = {}
    for perm_id in [*out_ids, *in_ids]:
        counts[perm_id] = counts.get(perm_id, 0) + 1
    total = 1
    for count in counts.values():
        total *= bell(count)
    return total


@dataclasses.dataclass(frozen=True)
class TensorLayout:
    """How one tensor of the weight space is laid out.

    Attributes:
        path: the tensor's path in the pytree (for messages).
        shape: the tensor's shape without channel axis.
        ids: permutation ids of the permuted axes, in axis order.
        permuted: positions of the permuted axes.
        fixed: positions of the axes that are never permuted (folded into channels).
    """

    path: str
    shape: tuple[int, ...]
    ids: tuple[Hashable, ...]
    permuted: tuple[int, ...]
    fixed: tuple[int, ...]

    @property
    def fixed_size(self) -> int:
        size = 1
        for axis in self.fixed:
            size *= self.shape[axis]
        return size

    @property
    def permuted_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[axis] for axis in self.permuted)


@dataclasses.dataclass(frozen=True)
class Reduction:
    """A reduction of one input tensor: diagonals over ``partition``, mean over the rest.

    The result has one axis per entry of ``kept`` (in that order) and the channel axis.
    """

    tensor: int
    partition: tuple[Block, ...]
    kept: tuple[int, ...]  # indices into ``partition``


@dataclasses.dataclass(frozen=True)
class Term:
    """One basis map (a valid partition) read by a group.

    Attributes:
        reduction: the input reduction it reads.
        partition: the valid partition as a frozenset of blocks of axis labels, the
            canonical name of the basis map.
    """

    reduction: Reduction
    partition: frozenset[frozenset[AxisLabel]]


@dataclasses.dataclass(frozen=True)
class Group:
    """All terms of one output tensor that share an output pattern.

    Attributes:
        partition: partition of the output tensor's permuted axes.
        carried: indices into ``partition`` of the carried blocks, increasing.
        terms: the terms, in the order their channels are concatenated (sorted by
            reduction, so groups of different output tensors that read the same
            reductions read them in the same order).
        source: index into :attr:`Plan.sources` of the concatenated input it reads.
    """

    partition: tuple[Block, ...]
    carried: tuple[int, ...]
    terms: tuple[Term, ...]
    source: int

    @property
    def has_bias(self) -> bool:
        """The group with nothing carried holds the bias of its output partition."""
        return not self.carried


@dataclasses.dataclass(frozen=True)
class Plan:
    """The static plan of an equivariant layer over one weight space."""

    tensors: tuple[TensorLayout, ...]
    groups: tuple[tuple[Group, ...], ...]  # per output tensor
    sources: tuple[tuple[Reduction, ...], ...]  # distinct concatenated group inputs

    @property
    def reductions(self) -> tuple[Reduction, ...]:
        """Every distinct reduction the layer computes, each once."""
        seen: dict[Reduction, None] = {}
        for groups in self.groups:
            for group in groups:
                for term in group.terms:
                    seen.setdefault(_canonical(term.reduction), None)
        return tuple(seen)

    @functools.cached_property
    def source_users(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per source, the ``(output tensor, group index)`` pairs that read it, in order.

        The layer keeps one kernel per source whose columns are the users' channel maps
        side by side, in this order, so one matmul serves every group reading the source.
        """
        users: list[list[tuple[int, int]]] = [[] for _ in self.sources]
        for out, groups in enumerate(self.groups):
            for index, group in enumerate(groups):
                users[group.source].append((out, index))
        return tuple(tuple(entries) for entries in users)

    def num_terms(self, out: int, inp: int) -> int:
        return sum(
            1 for group in self.groups[out] for term in group.terms if term.reduction.tensor == inp
        )


def _canonical(reduction: Reduction) -> Reduction:
    """The same reduction with its kept blocks in increasing order (computed once)."""
    return dataclasses.replace(reduction, kept=tuple(sorted(reduction.kept)))


def _sort_blocks(blocks: Sequence[Sequence[int]]) -> tuple[Block, ...]:
    return tuple(sorted(tuple(sorted(block)) for block in blocks))


def _valid_partitions(
    out_ids: Sequence[Hashable], in_ids: Sequence[Hashable]
) -> Iterator[list[list[AxisLabel]]]:
    """Valid partitions of the output and input axes: a product over ids of set partitions."""
    by_id: dict[Hashable, list[AxisLabel]] = {}
    for position, perm_id in enumerate(out_ids):
        by_id.setdefault(perm_id, []).append(("o", position))
    for position, perm_id in enumerate(in_ids):
        by_id.setdefault(perm_id, []).append(("i", position))

    def product(groups: list[list[AxisLabel]]) -> Iterator[list[list[AxisLabel]]]:
        if not groups:
            yield []
            return
        for head in set_partitions(groups[0]):
            for tail in product(groups[1:]):
                yield [*head, *tail]

    yield from product(list(by_id.values()))


def _split(partition: list[list[AxisLabel]]) -> tuple[tuple[Block, ...], tuple[Block, ...], dict]:
    """Splits a valid partition into output blocks, input blocks and the carried matching."""
    out_blocks, in_blocks, matching = [], [], []
    for block in partition:
        outs = tuple(sorted(p for side, p in block if side == "o"))
        ins = tuple(sorted(p for side, p in block if side == "i"))
        if outs:
            out_blocks.append(outs)
        if ins:
            in_blocks.append(ins)
        if outs and ins:
            matching.append((outs, ins))
    out_partition, in_partition = _sort_blocks(out_blocks), _sort_blocks(in_blocks)
    carried = {out_partition.index(outs): in_partition.index(ins) for outs, ins in matching}
    return out_partition, in_partition, carried


def _layout(path: str, axes: tuple, shape: tuple[int, ...]) -> TensorLayout:
    permuted = tuple(position for position, perm_id in enumerate(axes) if perm_id is not None)
    fixed = tuple(position for position, perm_id in enumerate(axes) if perm_id is None)
    return TensorLayout(
        path=path,
        shape=tuple(shape),
        ids=tuple(axes[position] for position in permuted),
        permuted=permuted,
        fixed=fixed,
    )


@functools.lru_cache(maxsize=256)
def compile_plan(
    paths: tuple[str, ...], axes: tuple[tuple, ...], shapes: tuple[tuple[int, ...], ...]
) -> Plan:
    """Builds the plan for a weight space (cached: a spec compiles once per shape).

    Args:
        paths: tensor paths, for messages.
        axes: each tensor's spec tuple (ids or ``None``).
        shapes: each tensor's shape, without channel axis.
    """
    tensors = tuple(
        _layout(path, spec_axes, shape)
        for path, spec_axes, shape in zip(paths, axes, shapes, strict=True)
    )
    all_groups = []
    sources: dict[tuple[Reduction, ...], int] = {}
    for out in tensors:
        groups: dict[tuple, list[Term]] = {}
        for index, inp in enumerate(tensors):
            for partition in _valid_partitions(out.ids, inp.ids):
                out_partition, in_partition, carried = _split(partition)
                carried_out = tuple(sorted(carried))
                reduction = Reduction(
                    tensor=index,
                    partition=in_partition,
                    kept=tuple(carried[block] for block in carried_out),
                )
                canonical = frozenset(frozenset(block) for block in partition)
                groups.setdefault((out_partition, carried_out), []).append(
                    Term(reduction=reduction, partition=canonical)
                )
        built = []
        for (out_partition, carried_out), terms in groups.items():
            terms.sort(key=lambda term: _reduction_key(term.reduction))
            source = tuple(term.reduction for term in terms)
            built.append(
                Group(
                    partition=out_partition,
                    carried=carried_out,
                    terms=tuple(terms),
                    source=sources.setdefault(source, len(sources)),
                )
            )
        all_groups.append(tuple(built))
    return Plan(tensors=tensors, groups=tuple(all_groups), sources=tuple(sources))


def _reduction_key(reduction: Reduction) -> tuple:
    return (reduction.tensor, reduction.partition, reduction.kept)


def einsum_letters(count: int) -> str:
    if count > len(string.ascii_letters) - 1:
        raise ValueError(f"too many axes for one tensor ({count})")
    return string.ascii_letters[:count]
