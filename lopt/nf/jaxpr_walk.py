"""Walking a jaxpr: one axis node per axis of every value, at every call site.

:class:`Analysis` visits every equation of a jaxpr and hands it, as a :class:`Site`, to
the rule for its primitive (a table passed in, see :mod:`lopt.nf.primitive_rules`). A
primitive without a rule that holds a body of the right signature (``jit``,
``custom_jvp_call``, ...) is followed into it; any other marks all its axes ordered.
Alongside the axis graph it tracks which values derive from the model's integer inputs
(gather indices) and when each parameter is first used.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from jax.extend import core as jcore

from lopt.nf.axis_graph import ORDERED, AxisGraph

Nodes = list[Any]
"""The axis nodes of one value, one per axis."""


class Context:
    """One call site of a (possibly shared, cached) jaxpr: its vars get their own nodes."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class Site:
    """One equation at one call site, with the axis nodes and shapes of its values.

    Attributes:
        ctx: the call site.
        eqn: the jaxpr equation.
        ins: per operand, its axis nodes.
        outs: per result, its axis nodes.
        in_shapes: per operand, its shape.
        out_shapes: per result, its shape.
    """

    ctx: Context
    eqn: Any
    ins: list[Nodes]
    outs: list[Nodes]
    in_shapes: list[tuple[int, ...]]
    out_shapes: list[tuple[int, ...]]

    @property
    def params(self) -> Mapping[str, Any]:
        """The equation's primitive parameters."""
        return self.eqn.params


Rule = Callable[["Analysis", Site], None]
"""Ties and tags the axes of one equation of a primitive."""

_BODY_PRIMITIVES = frozenset({"scan", "while", "cond"})
"""Primitives whose operands count as used only by the equations of their bodies."""


def shape_of(atom: Any) -> tuple[int, ...]:
    """The shape of a jaxpr var or literal (``()`` for a non-array)."""
    return tuple(getattr(atom.aval, "shape", ()))


def is_integer(atom: Any) -> bool:
    """Whether a jaxpr var or literal holds integers."""
    dtype = getattr(atom.aval, "dtype", None)
    try:
        return dtype is not None and np.issubdtype(dtype, np.integer)
    except TypeError:  # extended dtypes (PRNG keys)
        return False


class Analysis:
    """Walks a jaxpr, tying axes together and tagging the ordered ones.

    Attributes:
        rules: per primitive name, its rule.
        graph: the axis graph.
        derived: per ``(ctx, var)``, the names of the integer model inputs its (integer)
            value derives from.
        unmodelled: names of primitives met that neither have a rule nor a body.
        param_of: per ``(ctx, var)``, the index of the parameter leaf it carries into a body.
        first_use: per parameter leaf, the execution-order position of its first use by a
            non-call primitive.
    """

    def __init__(self, rules: Mapping[str, Rule]) -> None:
        self.rules = rules
        self.graph = AxisGraph()
        self.derived: dict[tuple[Context, Any], frozenset[str]] = {}
        self.unmodelled: set[str] = set()
        self.param_of: dict[tuple[Context, Any], int] = {}
        self.first_use: dict[int, int] = {}
        self._clock = itertools.count()

    # -- nodes ------------------------------------------------------------------------
    def nodes(self, ctx: Context, atom: Any) -> Nodes:
        """The axis nodes of ``atom`` at call site ``ctx`` (fresh, ordered ones for a literal)."""
        rank = len(shape_of(atom))
        if isinstance(atom, jcore.Literal):
            key = object()
            nodes = [(key, axis) for axis in range(rank)]
            for node in nodes:  # a literal array is a constant: its entries have an order
                self.graph.tag(node, ORDERED)
            return nodes
        return [(ctx, atom, axis) for axis in range(rank)]

    def tie(self, a: Any, b: Any, size_a: int, size_b: int) -> None:
        """Ties two axes if their sizes match (a size-one axis broadcasts, carries nothing)."""
        if size_a == size_b:
            self.graph.union(a, b)

    def tie_same_rank(self, nodes_a: Nodes, shape_a: tuple, nodes_b: Nodes, shape_b: tuple) -> None:
        """Ties two values axis by axis, if they have the same rank."""
        if len(shape_a) == len(shape_b):
            for a, b, sa, sb in zip(nodes_a, nodes_b, shape_a, shape_b, strict=True):
                self.tie(a, b, sa, sb)

    def order(self, *node_lists: Sequence[Any]) -> None:
        """Marks every node of every list ordered."""
        for nodes in node_lists:
            for node in nodes:
                self.graph.tag(node, ORDERED)

    def derived_of(self, ctx: Context, atom: Any) -> frozenset[str]:
        """The integer model inputs ``atom``'s value derives from."""
        if isinstance(atom, jcore.Literal):
            return frozenset()
        return self.derived.get((ctx, atom), frozenset())

    # -- walking ----------------------------------------------------------------------
    def walk(self, ctx: Context, jaxpr: jcore.Jaxpr, consts: Sequence[Any] = ()) -> None:
        """Visits every equation of ``jaxpr`` at call site ``ctx``."""
        del consts  # only their presence matters: captured constants are ordered
        for var in jaxpr.constvars:
            self.order(self.nodes(ctx, var))
        used = {atom for atom in jaxpr.outvars if not isinstance(atom, jcore.Literal)}
        for eqn in jaxpr.eqns:
            used.update(atom for atom in eqn.invars if not isinstance(atom, jcore.Literal))
        for eqn in jaxpr.eqns:
            self.equation(ctx, eqn, live=any(atom in used for atom in eqn.outvars))

    def equation(self, ctx: Context, eqn: Any, live: bool = True) -> None:
        """Visits one equation: provenance, first uses, then its primitive's rule."""
        name = eqn.primitive.name
        site = Site(
            ctx,
            eqn,
            ins=[self.nodes(ctx, atom) for atom in eqn.invars],
            outs=[self.nodes(ctx, atom) for atom in eqn.outvars],
            in_shapes=[shape_of(atom) for atom in eqn.invars],
            out_shapes=[shape_of(atom) for atom in eqn.outvars],
        )
        sources = frozenset().union(*(self.derived_of(ctx, atom) for atom in eqn.invars))
        if sources:
            for atom in eqn.outvars:
                if is_integer(atom):
                    self.derived[(ctx, atom)] = sources
        if live and name not in _BODY_PRIMITIVES:
            now = next(self._clock)
            for atom in eqn.invars:
                index = None if isinstance(atom, jcore.Literal) else self.param_of.get((ctx, atom))
                if index is not None:
                    self.first_use.setdefault(index, now)
        rule = self.rules.get(name)
        if rule is not None:
            rule(self, site)
        elif not self.call(site):
            if any(site.in_shapes) or any(site.out_shapes):
                self.unmodelled.add(name)
            self.order(*site.ins, *site.outs)

    def _boundary_nodes(
        self,
        outer_nodes: Sequence[Nodes],
        inner: Context,
        inner_atoms: Sequence[Any],
        drop_leading: Sequence[bool] | None,
    ) -> list[tuple[Nodes, Nodes]]:
        """Per value crossing a body's boundary, its outer and its inner axis nodes.

        A scanned operand or result (``drop_leading``) crosses without its leading axis.
        """
        pairs = []
        for index, (nodes, atom) in enumerate(zip(outer_nodes, inner_atoms, strict=True)):
            inner_nodes = self.nodes(inner, atom)
            if drop_leading is not None and drop_leading[index]:
                nodes = nodes[1:]
            pairs.append((nodes, inner_nodes))
        return pairs

    def _pass(
        self,
        from_ctx: Context,
        from_atom: Any,
        from_nodes: Nodes,
        to_ctx: Context,
        to_var: Any,
        to_nodes: Nodes,
    ) -> None:
        """Ties a value to the var it is bound to across a body's boundary, provenance too."""
        for a, b in zip(from_nodes, to_nodes, strict=True):
            self.graph.union(a, b)
        sources = self.derived_of(from_ctx, from_atom)
        if sources:
            self.derived[(to_ctx, to_var)] = sources

    def enter(
        self,
        ctx: Context,
        outer_atoms: Sequence[Any],
        outer_nodes: Sequence[Nodes],
        inner_vars: Sequence[Any],
        inner: Context,
        drop_leading: Sequence[bool] | None = None,
    ) -> None:
        """Ties outer operands to a body's invars (optionally without a scanned axis)."""
        pairs = self._boundary_nodes(outer_nodes, inner, inner_vars, drop_leading)
        for atom, var, (nodes, inner_nodes) in zip(outer_atoms, inner_vars, pairs, strict=True):
            self._pass(ctx, atom, nodes, inner, var, inner_nodes)
            param = None if isinstance(atom, jcore.Literal) else self.param_of.get((ctx, atom))
            if param is not None:
                self.param_of[(inner, var)] = param

    def leave(
        self,
        ctx: Context,
        inner: Context,
        inner_atoms: Sequence[Any],
        outer_vars: Sequence[Any],
        outer_nodes: Sequence[Nodes],
        drop_leading: Sequence[bool] | None = None,
    ) -> None:
        """Ties a body's outvars to the outer results (optionally without a scanned axis)."""
        pairs = self._boundary_nodes(outer_nodes, inner, inner_atoms, drop_leading)
        for atom, var, (nodes, inner_nodes) in zip(inner_atoms, outer_vars, pairs, strict=True):
            self._pass(inner, atom, inner_nodes, ctx, var, nodes)

    def call(self, site: Site) -> bool:
        """Follows a call primitive into its body; whether it had one of its signature."""
        ctx, eqn = site.ctx, site.eqn
        for value in eqn.params.values():
            body = value.jaxpr if isinstance(value, jcore.ClosedJaxpr) else value
            if not isinstance(body, jcore.Jaxpr):
                continue
            if len(body.invars) != len(eqn.invars) or len(body.outvars) != len(eqn.outvars):
                continue
            if [shape_of(v) for v in body.invars] != [shape_of(a) for a in eqn.invars]:
                continue
            inner = Context()
            self.enter(ctx, eqn.invars, site.ins, body.invars, inner)
            self.walk(inner, body)
            self.leave(ctx, inner, body.outvars, eqn.outvars, site.outs)
            return True
        return False

    def tie_loop(self, inner: Context, carry_in: Sequence[Any], carry_out: Sequence[Any]) -> None:
        """Ties a loop body's carried invars to the outvars that feed them back."""
        for var_in, atom_out in zip(carry_in, carry_out, strict=True):
            for a, b in zip(self.nodes(inner, var_in), self.nodes(inner, atom_out), strict=True):
                self.graph.union(a, b)
