"""Automatic permutation specs: derived from the computation a model performs.

The parameter tree alone does not say how layers connect (which layers read the residual
stream, which kernel consumes which hidden layer), but the computation does. We trace
``apply_fn(params, inputs)`` to a jaxpr and give every axis of every value in it a node of
a union-find. Each primitive ties together the axes that index the same neurons:

* elementwise ops tie operand axis ``i`` to output axis ``i``;
* ``dot_general`` ties contracted axes of both operands, batch axes, and free axes to the
  output; ``conv_general_dilated`` does the same for the batch and feature axes;
* reductions, ``broadcast_in_dim``, ``transpose``, ``reshape`` (where it only adds or
  removes size-one axes), ``squeeze``, gathers and scans map the axes they carry through;
* control-flow and call primitives (``jit``, ``custom_jvp_call``, ``scan``, ``while``,
  ``cond``) are followed into their bodies, each call site separately.

Axes whose order matters to the computation are marked *ordered*: scanned (time) axes,
axes touched by ``iota`` (positions, causal masks), slicing, padding, cumulative ops,
sorting, conv spatial axes, constants captured by the function, and every axis of a
primitive the analysis does not model. A class of tied axes is then resolved to one id:

* it contains an ordered axis -> ``Spatial`` if it is a conv kernel's spatial axis, else
  ``None`` (a positional-embedding axis);
* it reaches an axis of the model's inputs or outputs, or the value range of integer
  inputs used as gather indices (a vocabulary) -> ``ByChoice``: permuting it changes the
  function, as the UNF paper's input-pixel and output-class permutations do;
* otherwise -> a plain string id, a **true symmetry**: every operation touching the
  class commutes with one simultaneous permutation of all its axes, so permuting the
  parameter axes of the class leaves ``apply_fn`` unchanged.

Ids are named after the first parameter axis of the class in order of use,
``"<module path>/<param>:<axis>"`` (e.g. ``"Dense_0/kernel:1"``); by-choice ids after the
input or output axis they reach (``ByChoice("input/axis1")``, ``ByChoice("input/values")``,
``ByChoice("output/axis2")``). Strings never collide the way ``-0 == 0`` integers do.

:func:`lopt.tasks.check_symmetry` verifies a spec numerically.

A layer of width one is a degenerate case: reshapes that add or drop unit axes cannot say
which unit axis carries the neuron, so such an axis may get an id of its own instead of
the id of its layer. That is still a true symmetry (the only permutation of one neuron is
the identity), but a hand-written spec would share the id.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from lopt.nf import spec as nfspec

PyTree = Any

_ORDERED = "ordered"
_SPATIAL = "spatial"

_ELEMENTWISE = frozenset(
    [
        "abs",
        "acos",
        "acosh",
        "add",
        "add_any",
        "and",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "clamp",
        "clz",
        "conj",
        "convert_element_type",
        "copy",
        "copy_p",
        "cos",
        "cosh",
        "digamma",
        "div",
        "eq",
        "erf",
        "erf_inv",
        "erfc",
        "exp",
        "exp2",
        "expm1",
        "floor",
        "ge",
        "gt",
        "igamma",
        "igammac",
        "imag",
        "integer_pow",
        "is_finite",
        "le",
        "lgamma",
        "log",
        "log1p",
        "logistic",
        "lt",
        "max",
        "min",
        "mul",
        "ne",
        "neg",
        "nextafter",
        "not",
        "or",
        "polygamma",
        "population_count",
        "pow",
        "real",
        "reduce_precision",
        "rem",
        "round",
        "rsqrt",
        "select_n",
        "shift_left",
        "shift_right_arithmetic",
        "shift_right_logical",
        "sign",
        "sin",
        "sinh",
        "sqrt",
        "square",
        "stop_gradient",
        "sub",
        "tan",
        "tanh",
        "xor",
        "sharding_constraint",
        "mesh_cast",
        "reshard",
        "pvary",
        "optimization_barrier",
    ]
)
_REDUCTIONS = frozenset(
    [
        "reduce_sum",
        "reduce_max",
        "reduce_min",
        "reduce_prod",
        "reduce_and",
        "reduce_or",
        "reduce_xor",
    ]
)
_ARG_REDUCTIONS = frozenset({"argmax", "argmin"})
_CUMULATIVE = frozenset(["cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"])
_REDUCE_WINDOWS = frozenset(
    ["reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"]
)


class _Ctx:
    """One call site of a (possibly shared, cached) jaxpr: its vars get their own nodes."""

    __slots__ = ()


class _AxisGraph:
    """Union-find over axes, with tags (ordered, spatial, by-choice names) per class."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}
        self.tags: dict[Any, dict[Any, int]] = {}
        self._counter = itertools.count()

    def find(self, node: Any) -> Any:
        self.parent.setdefault(node, node)
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: Any, b: Any) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[root_b] = root_a

    def tag(self, node: Any, tag: Any) -> None:
        self.tags.setdefault(node, {}).setdefault(tag, next(self._counter))

    def class_tags(self) -> dict[Any, dict[Any, int]]:
        merged: dict[Any, dict[Any, int]] = {}
        for node, tags in self.tags.items():
            bucket = merged.setdefault(self.find(node), {})
            for tag, order in tags.items():
                bucket[tag] = min(order, bucket.get(tag, order))
        return merged


def _shape(atom: Any) -> tuple[int, ...]:
    return tuple(getattr(atom.aval, "shape", ()))


def _is_integer(atom: Any) -> bool:
    dtype = getattr(atom.aval, "dtype", None)
    try:
        return dtype is not None and np.issubdtype(dtype, np.integer)
    except TypeError:  # extended dtypes (PRNG keys)
        return False


class _Analysis:
    """Walks a jaxpr, tying axes together and tagging the ordered ones."""

    def __init__(self) -> None:
        self.graph = _AxisGraph()
        # (ctx, var) -> names of the integer model inputs its (integer) value derives from.
        self.derived: dict[tuple[_Ctx, Any], frozenset[str]] = {}
        self.unmodelled: set[str] = set()
        # (ctx, var) -> index of the parameter leaf it carries into a body; and the
        # execution-order position of each parameter's first use by a non-call primitive.
        self.param_of: dict[tuple[_Ctx, Any], int] = {}
        self.first_use: dict[int, int] = {}
        self._clock = itertools.count()

    # -- nodes ------------------------------------------------------------------------
    def nodes(self, ctx: _Ctx, atom: Any) -> list[Any]:
        rank = len(_shape(atom))
        if isinstance(atom, jcore.Literal):
            key = object()
            nodes = [(key, axis) for axis in range(rank)]
            for node in nodes:  # a literal array is a constant: its entries have an order
                self.graph.tag(node, _ORDERED)
            return nodes
        return [(ctx, atom, axis) for axis in range(rank)]

    def tie(self, a: Any, b: Any, size_a: int, size_b: int) -> None:
        if size_a == size_b:
            self.graph.union(a, b)

    def tie_same_rank(self, nodes_a: list, shape_a: tuple, nodes_b: list, shape_b: tuple) -> None:
        if len(shape_a) == len(shape_b):
            for a, b, sa, sb in zip(nodes_a, nodes_b, shape_a, shape_b, strict=True):
                self.tie(a, b, sa, sb)

    def order(self, *node_lists: Sequence[Any]) -> None:
        for nodes in node_lists:
            for node in nodes:
                self.graph.tag(node, _ORDERED)

    # -- walking ----------------------------------------------------------------------
    def walk(self, ctx: _Ctx, jaxpr: jcore.Jaxpr, consts: Sequence[Any] = ()) -> None:
        del consts  # only their presence matters: captured constants are ordered
        for var in jaxpr.constvars:
            self.order(self.nodes(ctx, var))
        used = {atom for atom in jaxpr.outvars if not isinstance(atom, jcore.Literal)}
        for eqn in jaxpr.eqns:
            used.update(atom for atom in eqn.invars if not isinstance(atom, jcore.Literal))
        for eqn in jaxpr.eqns:
            self.equation(ctx, eqn, live=any(atom in used for atom in eqn.outvars))

    def derived_of(self, ctx: _Ctx, atom: Any) -> frozenset[str]:
        if isinstance(atom, jcore.Literal):
            return frozenset()
        return self.derived.get((ctx, atom), frozenset())

    def equation(self, ctx: _Ctx, eqn: Any, live: bool = True) -> None:
        name = eqn.primitive.name
        ins = [self.nodes(ctx, atom) for atom in eqn.invars]
        outs = [self.nodes(ctx, atom) for atom in eqn.outvars]
        in_shapes = [_shape(atom) for atom in eqn.invars]
        out_shapes = [_shape(atom) for atom in eqn.outvars]
        sources = frozenset().union(*(self.derived_of(ctx, atom) for atom in eqn.invars))
        if sources:
            for atom in eqn.outvars:
                if _is_integer(atom):
                    self.derived[(ctx, atom)] = sources
        params = eqn.params
        if live and name not in ("scan", "while", "cond"):
            now = next(self._clock)
            for atom in eqn.invars:
                index = None if isinstance(atom, jcore.Literal) else self.param_of.get((ctx, atom))
                if index is not None:
                    self.first_use.setdefault(index, now)

        if name in _ELEMENTWISE:
            for out, out_shape in zip(outs, out_shapes, strict=True):
                for nodes, shape in zip(ins, in_shapes, strict=True):
                    self.tie_same_rank(nodes, shape, out, out_shape)
        elif name in _REDUCTIONS or name in _ARG_REDUCTIONS:
            axes = set(params["axes"])
            kept = [i for i in range(len(in_shapes[0])) if i not in axes]
            for out_axis, in_axis in enumerate(kept):
                self.graph.union(ins[0][in_axis], outs[0][out_axis])
            if name in _ARG_REDUCTIONS:  # the result is a position along the reduced axes
                self.order([ins[0][i] for i in axes])
        elif name in _CUMULATIVE:
            self.tie_same_rank(ins[0], in_shapes[0], outs[0], out_shapes[0])
            self.order([ins[0][params["axis"]]])
        elif name == "broadcast_in_dim":
            for in_axis, out_axis in enumerate(params["broadcast_dimensions"]):
                self.tie(
                    ins[0][in_axis],
                    outs[0][out_axis],
                    in_shapes[0][in_axis],
                    out_shapes[0][out_axis],
                )
        elif name == "transpose":
            for out_axis, in_axis in enumerate(params["permutation"]):
                self.graph.union(ins[0][in_axis], outs[0][out_axis])
        elif name == "squeeze":
            dropped = {d % max(len(in_shapes[0]), 1) for d in params["dimensions"]}
            kept = [i for i in range(len(in_shapes[0])) if i not in dropped]
            for out_axis, in_axis in enumerate(kept):
                self.graph.union(ins[0][in_axis], outs[0][out_axis])
        elif name == "reshape":
            self.reshape(ins[0], in_shapes[0], outs[0], out_shapes[0], params.get("dimensions"))
        elif name == "dot_general":
            self.dot_general(ins, in_shapes, outs[0], params["dimension_numbers"])
        elif name == "conv_general_dilated":
            self.conv(ins, outs[0], params)
        elif name == "gather":
            self.gather(ctx, eqn, ins, in_shapes, outs[0], params)
        elif name == "iota":
            self.order(outs[0])
        elif name in ("slice", "dynamic_slice"):
            sizes = (
                [
                    hi - lo
                    for lo, hi in zip(params["start_indices"], params["limit_indices"], strict=True)
                ]
                if name == "slice"
                else list(params["slice_sizes"])
            )
            strides = params.get("strides") or (1,) * len(sizes)
            for axis, (size, stride) in enumerate(zip(sizes, strides, strict=True)):
                full = size == in_shapes[0][axis] and stride == 1
                if full:
                    self.graph.union(ins[0][axis], outs[0][axis])
                else:
                    self.order([ins[0][axis], outs[0][axis]])
        elif name == "dynamic_update_slice":
            self.tie_same_rank(ins[0], in_shapes[0], outs[0], out_shapes[0])
            for axis, (size, full) in enumerate(zip(in_shapes[1], in_shapes[0], strict=True)):
                if size == full:
                    self.graph.union(ins[1][axis], outs[0][axis])
                else:
                    self.order([ins[1][axis], outs[0][axis]])
        elif name in ("concatenate", "split", "rev", "pad", "sort"):
            self.along_axis(name, ins, in_shapes, outs, out_shapes, params)
        elif name in _REDUCE_WINDOWS:
            self.reduce_window(ins[0], outs[0], params)
        elif name == "scan":
            self.scan(ctx, eqn, ins, in_shapes, outs, out_shapes, params)
        elif name == "while":
            self.while_loop(ctx, eqn, ins, outs, params)
        elif name == "cond":
            self.cond(ctx, eqn, ins, outs, params)
        elif not self.call(ctx, eqn, ins, outs):
            if any(in_shapes) or any(out_shapes):
                self.unmodelled.add(name)
            self.order(*ins, *outs)

    # -- primitive rules ----------------------------------------------------------------
    def reshape(self, ins, in_shape, outs, out_shape, dimensions) -> None:
        if dimensions is not None:
            self.order(ins, outs)
            return
        # Group consecutive axes with equal products; a group mapping one axis to one axis
        # of the same size carries the index through, any merge or split loses the order.
        i = j = 0
        while i < len(in_shape) or j < len(out_shape):
            group_in, group_out = [], []
            prod_in = prod_out = 1
            while True:
                if prod_in <= prod_out and i < len(in_shape):
                    group_in.append(i)
                    prod_in *= in_shape[i]
                    i += 1
                elif j < len(out_shape):
                    group_out.append(j)
                    prod_out *= out_shape[j]
                    j += 1
                else:
                    break
                if (
                    prod_in == prod_out
                    and (i == len(in_shape) or in_shape[i] != 1)
                    and (j == len(out_shape) or out_shape[j] != 1)
                ):
                    break
            big_in = [a for a in group_in if in_shape[a] != 1]
            big_out = [a for a in group_out if out_shape[a] != 1]
            if len(big_in) == 1 and len(big_out) == 1:
                self.graph.union(ins[big_in[0]], outs[big_out[0]])
            else:
                self.order([ins[a] for a in big_in], [outs[a] for a in big_out])

    def dot_general(self, ins, in_shapes, out, dimension_numbers) -> None:
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
        lhs, rhs = ins
        for a, b in zip(lhs_contract, rhs_contract, strict=True):
            self.graph.union(lhs[a], rhs[b])
        for a, b in zip(lhs_batch, rhs_batch, strict=True):
            self.graph.union(lhs[a], rhs[b])
        lhs_free = [a for a in range(len(in_shapes[0])) if a not in (*lhs_contract, *lhs_batch)]
        rhs_free = [a for a in range(len(in_shapes[1])) if a not in (*rhs_contract, *rhs_batch)]
        carried = [lhs[a] for a in lhs_batch] + [lhs[a] for a in lhs_free]
        carried += [rhs[a] for a in rhs_free]
        for node, out_node in zip(carried, out, strict=True):
            self.graph.union(node, out_node)

    def conv(self, ins, out, params) -> None:
        lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
        lhs, rhs = ins
        grouped = params["feature_group_count"] != 1 or params["batch_group_count"] != 1
        self.graph.union(lhs[lhs_spec[0]], out[out_spec[0]])
        if grouped:
            self.order([lhs[lhs_spec[1]], rhs[rhs_spec[0]], rhs[rhs_spec[1]], out[out_spec[1]]])
        else:
            self.graph.union(lhs[lhs_spec[1]], rhs[rhs_spec[1]])
            self.graph.union(rhs[rhs_spec[0]], out[out_spec[1]])
        for axis in rhs_spec[2:]:
            self.graph.tag(rhs[axis], _SPATIAL)
        self.order(
            [lhs[a] for a in lhs_spec[2:]],
            [rhs[a] for a in rhs_spec[2:]],
            [out[a] for a in out_spec[2:]],
        )

    def gather(self, ctx, eqn, ins, in_shapes, out, params) -> None:
        numbers = params["dimension_numbers"]
        operand, indices = ins
        operand_shape, indices_shape = in_shapes
        sources = self.derived_of(ctx, eqn.invars[1])
        for axis in numbers.start_index_map:
            if sources:
                self.graph.tag(operand[axis], ("choice", f"{min(sources)}/values"))
            else:
                self.order([operand[axis]])
        sliced = [
            a
            for a in range(len(operand_shape))
            if a not in numbers.collapsed_slice_dims and a not in numbers.operand_batching_dims
        ]
        for axis, out_axis in zip(sliced, numbers.offset_dims, strict=True):
            full = params["slice_sizes"][axis] == operand_shape[axis]
            if full and axis not in numbers.start_index_map:
                self.graph.union(operand[axis], out[out_axis])
            else:
                self.order([operand[axis], out[out_axis]])
        batch_out = [a for a in range(len(out)) if a not in numbers.offset_dims]
        batch_in = list(range(len(indices_shape) - 1))  # the last axis holds index vectors
        for in_axis, out_axis in zip(batch_in, batch_out, strict=True):
            self.graph.union(indices[in_axis], out[out_axis])
        for a, b in zip(
            numbers.operand_batching_dims, numbers.start_indices_batching_dims, strict=True
        ):
            self.graph.union(operand[a], indices[b])

    def along_axis(self, name, ins, in_shapes, outs, out_shapes, params) -> None:
        if name == "pad":
            ordered = [a for a, cfg in enumerate(params["padding_config"]) if any(cfg)]
            ins = ins[:1]
            in_shapes = in_shapes[:1]
        elif name == "rev":
            ordered = list(params["dimensions"])
        else:
            key = "dimension" if name in ("concatenate", "sort") else "axis"
            ordered = [params[key]]
        every = list(zip(ins, in_shapes, strict=True)) + list(zip(outs, out_shapes, strict=True))
        first, first_shape = every[0]
        for nodes, shape in every:
            if len(shape) != len(first_shape):
                continue
            for axis in range(len(shape)):
                if axis in ordered:
                    self.order([nodes[axis], first[axis]])
                else:
                    self.tie(nodes[axis], first[axis], shape[axis], first_shape[axis])

    def reduce_window(self, ins, out, params) -> None:
        rank = len(ins)
        dilation = params.get("base_dilation") or (1,) * rank
        window_dilation = params.get("window_dilation") or (1,) * rank
        for axis in range(rank):
            plain = (
                params["window_dimensions"][axis] == 1
                and params["window_strides"][axis] == 1
                and tuple(params["padding"][axis]) == (0, 0)
                and dilation[axis] == 1
                and window_dilation[axis] == 1
            )
            if plain:
                self.graph.union(ins[axis], out[axis])
            else:
                self.order([ins[axis], out[axis]])

    def enter(
        self,
        ctx: _Ctx,
        outer_atoms,
        outer_nodes,
        inner_vars,
        inner: _Ctx,
        drop_leading: Sequence[bool] | None = None,
    ) -> None:
        """Ties outer operands to a body's invars (optionally without a scanned axis)."""
        for index, (atom, nodes, var) in enumerate(
            zip(outer_atoms, outer_nodes, inner_vars, strict=True)
        ):
            inner_nodes = self.nodes(inner, var)
            if drop_leading is not None and drop_leading[index]:
                nodes = nodes[1:]
            for a, b in zip(nodes, inner_nodes, strict=True):
                self.graph.union(a, b)
            sources = self.derived_of(ctx, atom)
            if sources:
                self.derived[(inner, var)] = sources
            index = None if isinstance(atom, jcore.Literal) else self.param_of.get((ctx, atom))
            if index is not None:
                self.param_of[(inner, var)] = index

    def leave(
        self,
        ctx: _Ctx,
        inner: _Ctx,
        inner_atoms,
        outer_vars,
        outer_nodes,
        drop_leading: Sequence[bool] | None = None,
    ) -> None:
        """Ties a body's outvars to the outer results."""
        for index, (atom, var, nodes) in enumerate(
            zip(inner_atoms, outer_vars, outer_nodes, strict=True)
        ):
            inner_nodes = self.nodes(inner, atom)
            if drop_leading is not None and drop_leading[index]:
                nodes = nodes[1:]
            for a, b in zip(inner_nodes, nodes, strict=True):
                self.graph.union(a, b)
            sources = self.derived_of(inner, atom)
            if sources:
                self.derived[(ctx, var)] = sources

    def call(self, ctx, eqn, ins, outs) -> bool:
        for value in eqn.params.values():
            body = value.jaxpr if isinstance(value, jcore.ClosedJaxpr) else value
            if not isinstance(body, jcore.Jaxpr):
                continue
            if len(body.invars) != len(eqn.invars) or len(body.outvars) != len(eqn.outvars):
                continue
            if [_shape(v) for v in body.invars] != [_shape(a) for a in eqn.invars]:
                continue
            inner = _Ctx()
            self.enter(ctx, eqn.invars, ins, body.invars, inner)
            self.walk(inner, body)
            self.leave(ctx, inner, body.outvars, eqn.outvars, outs)
            return True
        return False

    def scan(self, ctx, eqn, ins, in_shapes, outs, out_shapes, params) -> None:
        body = params["jaxpr"].jaxpr
        n_consts, n_carry = params["num_consts"], params["num_carry"]
        n_in = len(eqn.invars)
        scanned_in = [i >= n_consts + n_carry for i in range(n_in)]
        scanned_out = [i >= n_carry for i in range(len(eqn.outvars))]
        # The scanned (time) axis is ordered: the carry threads through it in sequence.
        self.order(*[ins[i][:1] for i in range(n_in) if scanned_in[i]])
        self.order(*[outs[i][:1] for i in range(len(outs)) if scanned_out[i]])
        inner = _Ctx()
        self.enter(ctx, eqn.invars, ins, body.invars, inner, scanned_in)
        carry_in = body.invars[n_consts : n_consts + n_carry]
        carry_out = body.outvars[:n_carry]
        for _ in range(3):  # integer-input provenance may flow around the loop
            self.walk(inner, body)
            changed = False
            for var_in, atom_out in zip(carry_in, carry_out, strict=True):
                sources = self.derived_of(inner, atom_out)
                if sources - self.derived_of(inner, var_in):
                    self.derived[(inner, var_in)] = sources | self.derived_of(inner, var_in)
                    changed = True
            if not changed:
                break
        for var_in, atom_out in zip(carry_in, carry_out, strict=True):
            for a, b in zip(self.nodes(inner, var_in), self.nodes(inner, atom_out), strict=True):
                self.graph.union(a, b)
        self.leave(ctx, inner, body.outvars, eqn.outvars, outs, scanned_out)

    def while_loop(self, ctx, eqn, ins, outs, params) -> None:
        n_cond, n_body = params["cond_nconsts"], params["body_nconsts"]
        cond, body = params["cond_jaxpr"].jaxpr, params["body_jaxpr"].jaxpr
        carry_atoms = eqn.invars[n_cond + n_body :]
        carry_nodes = ins[n_cond + n_body :]
        inner = _Ctx()
        self.enter(ctx, eqn.invars[n_cond:], ins[n_cond:], body.invars, inner)
        self.walk(inner, body)
        self.leave(ctx, inner, body.outvars, eqn.outvars, outs)
        for var_in, atom_out in zip(body.invars[n_body:], body.outvars, strict=True):
            for a, b in zip(self.nodes(inner, var_in), self.nodes(inner, atom_out), strict=True):
                self.graph.union(a, b)
        cond_ctx = _Ctx()
        self.enter(
            ctx,
            [*eqn.invars[:n_cond], *carry_atoms],
            [*ins[:n_cond], *carry_nodes],
            cond.invars,
            cond_ctx,
        )
        self.walk(cond_ctx, cond)

    def cond(self, ctx, eqn, ins, outs, params) -> None:
        for branch in params["branches"]:
            inner = _Ctx()
            self.enter(ctx, eqn.invars[1:], ins[1:], branch.jaxpr.invars, inner)
            self.walk(inner, branch.jaxpr)
            self.leave(ctx, inner, branch.jaxpr.outvars, eqn.outvars, outs)


def _leaf_name(path: Any, prefix: str) -> str:
    suffix = jax.tree_util.keystr(path, simple=True, separator="/")
    return f"{prefix}/{suffix}" if suffix else prefix


def derive_spec(
    apply_fn: Callable[[PyTree, PyTree], PyTree],
    params: PyTree,
    inputs: PyTree,
    *,
    warn: bool = True,
) -> nfspec.Spec:
    """Derives the permutation spec of ``params`` from the computation ``apply_fn`` performs.

    See the module docstring for the rules. The result is exact for the symmetries it
    reports (plain ids), and conservative elsewhere: an axis the analysis cannot prove
    permutable is ``None`` (or ``ByChoice``/``Spatial`` as described).

    Args:
        apply_fn: ``apply_fn(params, inputs) -> outputs`` (e.g. a flax ``module.apply``
            wrapped to take the inner ``params`` dict); it is traced, not run.
        params: parameter pytree of arrays or ``jax.ShapeDtypeStruct``.
        inputs: an example input pytree (arrays or ``jax.ShapeDtypeStruct``); integer
            inputs used as gather indices (token ids) mark the gathered axis as
            ``ByChoice("input/values")``.
        warn: warn when the function uses primitives the analysis does not model (their
            axes become ``None``).

    Returns:
        A spec pytree matching ``params``: one tuple of ids per tensor.
    """
    closed = jax.make_jaxpr(apply_fn)(params, inputs)
    param_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    input_leaves = jax.tree_util.tree_flatten_with_path(inputs)[0]
    out_shapes = jax.eval_shape(apply_fn, params, inputs)
    output_leaves = jax.tree_util.tree_flatten_with_path(out_shapes)[0]
    jaxpr = closed.jaxpr
    if len(jaxpr.invars) != len(param_leaves) + len(input_leaves):
        raise ValueError("could not match the traced function's arguments to params and inputs")

    analysis = _Analysis()
    top = _Ctx()
    param_vars = jaxpr.invars[: len(param_leaves)]
    for index, var in enumerate(param_vars):
        analysis.param_of[(top, var)] = index
    for (path, _), var in zip(input_leaves, jaxpr.invars[len(param_leaves) :], strict=True):
        name = _leaf_name(path, "input")
        for axis, node in enumerate(analysis.nodes(top, var)):
            analysis.graph.tag(node, ("choice", f"{name}/axis{axis}"))
        if _is_integer(var):
            analysis.derived[(top, var)] = frozenset({name})
    analysis.walk(top, jaxpr, closed.consts)
    for (path, _), atom in zip(output_leaves, jaxpr.outvars, strict=True):
        name = _leaf_name(path, "output")
        for axis, node in enumerate(analysis.nodes(top, atom)):
            analysis.graph.tag(node, ("choice", f"{name}/axis{axis}"))

    if warn and analysis.unmodelled:
        warnings.warn(
            f"derive_spec: primitives {sorted(analysis.unmodelled)} are not modelled; the "
            "axes they touch are treated as ordered (never permuted)",
            stacklevel=2,
        )

    class_tags = analysis.graph.class_tags()
    members: list[tuple[tuple, Any, str]] = []
    for leaf_index, ((path, _), var) in enumerate(zip(param_leaves, param_vars, strict=True)):
        for axis, node in enumerate(analysis.nodes(top, var)):
            rank = len(_shape(var))
            order = (analysis.first_use.get(leaf_index, math.inf), -rank, leaf_index, axis)
            name = f"{_leaf_name(path, '')[1:] or 'params'}:{axis}"
            members.append((order, analysis.graph.find(node), name))
    representative: dict[Any, str] = {}
    for _, root, name in sorted(members, key=lambda m: m[0]):
        representative.setdefault(root, name)

    def resolve(root: Any) -> nfspec.PermId | None:
        tags = class_tags.get(root, {})
        if _ORDERED in tags:
            return nfspec.Spatial(representative[root]) if _SPATIAL in tags else None
        choices = sorted((order, tag[1]) for tag, order in tags.items() if isinstance(tag, tuple))
        if choices:
            return nfspec.ByChoice(choices[0][1])
        return representative[root]

    leaves = []
    for var in param_vars:
        leaves.append(
            tuple(resolve(analysis.graph.find(node)) for node in analysis.nodes(top, var))
        )
    spec = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)
    nfspec.validate(spec, params)
    return spec
