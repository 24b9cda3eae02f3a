"""Per-primitive rules: which axes of an equation index the same neurons, which are ordered.

:data:`RULES` maps a primitive's name to its rule, a function of the
:class:`~lopt.nf.jaxpr_walk.Analysis` and the equation's :class:`~lopt.nf.jaxpr_walk.Site`.
A rule ties the axes an operation carries through (``analysis.graph.union``, or
``analysis.tie`` where a size-one axis may broadcast) and marks ordered the axes whose
order the operation reads (``analysis.order``). The rules of ``scan``, ``while`` and
``cond`` walk their bodies as well.
"""

from __future__ import annotations

from collections.abc import Sequence

from lopt.nf.axis_graph import SPATIAL
from lopt.nf.jaxpr_walk import Analysis, Context, Nodes, Rule, Site

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
"""Primitives that tie operand axis ``i`` to result axis ``i`` (operands of equal rank)."""

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


def _elementwise(analysis: Analysis, site: Site) -> None:
    for out, out_shape in zip(site.outs, site.out_shapes, strict=True):
        for nodes, shape in zip(site.ins, site.in_shapes, strict=True):
            analysis.tie_same_rank(nodes, shape, out, out_shape)


def _reduction(analysis: Analysis, site: Site) -> None:
    axes = set(site.params["axes"])
    kept = [i for i in range(len(site.in_shapes[0])) if i not in axes]
    for out_axis, in_axis in enumerate(kept):
        analysis.graph.union(site.ins[0][in_axis], site.outs[0][out_axis])


def _arg_reduction(analysis: Analysis, site: Site) -> None:
    _reduction(analysis, site)
    # the result is a position along the reduced axes
    analysis.order([site.ins[0][i] for i in set(site.params["axes"])])


def _cumulative(analysis: Analysis, site: Site) -> None:
    analysis.tie_same_rank(site.ins[0], site.in_shapes[0], site.outs[0], site.out_shapes[0])
    analysis.order([site.ins[0][site.params["axis"]]])


def _broadcast_in_dim(analysis: Analysis, site: Site) -> None:
    ins, outs = site.ins[0], site.outs[0]
    in_shape, out_shape = site.in_shapes[0], site.out_shapes[0]
    for in_axis, out_axis in enumerate(site.params["broadcast_dimensions"]):
        analysis.tie(ins[in_axis], outs[out_axis], in_shape[in_axis], out_shape[out_axis])


def _transpose(analysis: Analysis, site: Site) -> None:
    for out_axis, in_axis in enumerate(site.params["permutation"]):
        analysis.graph.union(site.ins[0][in_axis], site.outs[0][out_axis])


def _squeeze(analysis: Analysis, site: Site) -> None:
    in_shape = site.in_shapes[0]
    dropped = {d % max(len(in_shape), 1) for d in site.params["dimensions"]}
    kept = [i for i in range(len(in_shape)) if i not in dropped]
    for out_axis, in_axis in enumerate(kept):
        analysis.graph.union(site.ins[0][in_axis], site.outs[0][out_axis])


def _reshape_groups(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> list[tuple[list[int], list[int]]]:
    """Consecutive runs of input and output axes with equal products, in order."""
    groups = []
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
        groups.append((group_in, group_out))
    return groups


def _reshape(analysis: Analysis, site: Site) -> None:
    ins, outs = site.ins[0], site.outs[0]
    if site.params.get("dimensions") is not None:
        analysis.order(ins, outs)
        return
    in_shape, out_shape = site.in_shapes[0], site.out_shapes[0]
    # a group mapping one axis to one axis of the same size carries the index through,
    # any merge or split loses the order
    for group_in, group_out in _reshape_groups(in_shape, out_shape):
        big_in = [a for a in group_in if in_shape[a] != 1]
        big_out = [a for a in group_out if out_shape[a] != 1]
        if len(big_in) == 1 and len(big_out) == 1:
            analysis.graph.union(ins[big_in[0]], outs[big_out[0]])
        else:
            analysis.order([ins[a] for a in big_in], [outs[a] for a in big_out])


def _dot_general(analysis: Analysis, site: Site) -> None:
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = site.params["dimension_numbers"]
    lhs, rhs = site.ins
    for a, b in zip(lhs_contract, rhs_contract, strict=True):
        analysis.graph.union(lhs[a], rhs[b])
    for a, b in zip(lhs_batch, rhs_batch, strict=True):
        analysis.graph.union(lhs[a], rhs[b])
    lhs_rank, rhs_rank = len(site.in_shapes[0]), len(site.in_shapes[1])
    lhs_free = [a for a in range(lhs_rank) if a not in (*lhs_contract, *lhs_batch)]
    rhs_free = [a for a in range(rhs_rank) if a not in (*rhs_contract, *rhs_batch)]
    carried = [lhs[a] for a in lhs_batch] + [lhs[a] for a in lhs_free]
    carried += [rhs[a] for a in rhs_free]
    for node, out_node in zip(carried, site.outs[0], strict=True):
        analysis.graph.union(node, out_node)


def _conv(analysis: Analysis, site: Site) -> None:
    params, out = site.params, site.outs[0]
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    lhs, rhs = site.ins
    grouped = params["feature_group_count"] != 1 or params["batch_group_count"] != 1
    analysis.graph.union(lhs[lhs_spec[0]], out[out_spec[0]])
    if grouped:
        analysis.order([lhs[lhs_spec[1]], rhs[rhs_spec[0]], rhs[rhs_spec[1]], out[out_spec[1]]])
    else:
        analysis.graph.union(lhs[lhs_spec[1]], rhs[rhs_spec[1]])
        analysis.graph.union(rhs[rhs_spec[0]], out[out_spec[1]])
    for axis in rhs_spec[2:]:
        analysis.graph.tag(rhs[axis], SPATIAL)
    analysis.order(
        [lhs[a] for a in lhs_spec[2:]],
        [rhs[a] for a in rhs_spec[2:]],
        [out[a] for a in out_spec[2:]],
    )


def _gather(analysis: Analysis, site: Site) -> None:
    params, out = site.params, site.outs[0]
    numbers = params["dimension_numbers"]
    operand, indices = site.ins
    operand_shape, indices_shape = site.in_shapes
    sources = analysis.derived_of(site.ctx, site.eqn.invars[1])
    for axis in numbers.start_index_map:
        if sources:
            analysis.graph.tag(operand[axis], ("choice", f"{min(sources)}/values"))
        else:
            analysis.order([operand[axis]])
    sliced = [
        a
        for a in range(len(operand_shape))
        if a not in numbers.collapsed_slice_dims and a not in numbers.operand_batching_dims
    ]
    for axis, out_axis in zip(sliced, numbers.offset_dims, strict=True):
        full = params["slice_sizes"][axis] == operand_shape[axis]
        if full and axis not in numbers.start_index_map:
            analysis.graph.union(operand[axis], out[out_axis])
        else:
            analysis.order([operand[axis], out[out_axis]])
    batch_out = [a for a in range(len(out)) if a not in numbers.offset_dims]
    batch_in = list(range(len(indices_shape) - 1))  # the last axis holds index vectors
    for in_axis, out_axis in zip(batch_in, batch_out, strict=True):
        analysis.graph.union(indices[in_axis], out[out_axis])
    for a, b in zip(
        numbers.operand_batching_dims, numbers.start_indices_batching_dims, strict=True
    ):
        analysis.graph.union(operand[a], indices[b])


def _iota(analysis: Analysis, site: Site) -> None:
    analysis.order(site.outs[0])


def _tie_sliced(analysis: Analysis, site: Site, sizes: Sequence[int]) -> None:
    """Ties the axes a slice of ``sizes`` takes whole; orders the others."""
    strides = site.params.get("strides") or (1,) * len(sizes)
    for axis, (size, stride) in enumerate(zip(sizes, strides, strict=True)):
        full = size == site.in_shapes[0][axis] and stride == 1
        if full:
            analysis.graph.union(site.ins[0][axis], site.outs[0][axis])
        else:
            analysis.order([site.ins[0][axis], site.outs[0][axis]])


def _slice(analysis: Analysis, site: Site) -> None:
    bounds = zip(site.params["start_indices"], site.params["limit_indices"], strict=True)
    _tie_sliced(analysis, site, [hi - lo for lo, hi in bounds])


def _dynamic_slice(analysis: Analysis, site: Site) -> None:
    _tie_sliced(analysis, site, list(site.params["slice_sizes"]))


def _dynamic_update_slice(analysis: Analysis, site: Site) -> None:
    ins, out = site.ins, site.outs[0]
    analysis.tie_same_rank(ins[0], site.in_shapes[0], out, site.out_shapes[0])
    for axis, (size, full) in enumerate(zip(site.in_shapes[1], site.in_shapes[0], strict=True)):
        if size == full:
            analysis.graph.union(ins[1][axis], out[axis])
        else:
            analysis.order([ins[1][axis], out[axis]])


def _tie_along(
    analysis: Analysis,
    values: Sequence[tuple[Nodes, tuple[int, ...]]],
    ordered: Sequence[int],
) -> None:
    """Ties all same-rank ``values`` (nodes, shape) to the first, except ``ordered`` axes."""
    first, first_shape = values[0]
    for nodes, shape in values:
        if len(shape) != len(first_shape):
            continue
        for axis in range(len(shape)):
            if axis in ordered:
                analysis.order([nodes[axis], first[axis]])
            else:
                analysis.tie(nodes[axis], first[axis], shape[axis], first_shape[axis])


def _values(site: Site, operands: int | None = None) -> list[tuple[Nodes, tuple[int, ...]]]:
    """The site's first ``operands`` operands (all if ``None``), then its results."""
    count = len(site.ins) if operands is None else operands
    return [
        *zip(site.ins[:count], site.in_shapes[:count], strict=True),
        *zip(site.outs, site.out_shapes, strict=True),
    ]


def _along_dimension(analysis: Analysis, site: Site) -> None:
    _tie_along(analysis, _values(site), [site.params["dimension"]])


def _along_axis(analysis: Analysis, site: Site) -> None:
    _tie_along(analysis, _values(site), [site.params["axis"]])


def _rev(analysis: Analysis, site: Site) -> None:
    _tie_along(analysis, _values(site), list(site.params["dimensions"]))


def _pad(analysis: Analysis, site: Site) -> None:
    ordered = [a for a, cfg in enumerate(site.params["padding_config"]) if any(cfg)]
    _tie_along(analysis, _values(site, operands=1), ordered)


def _reduce_window(analysis: Analysis, site: Site) -> None:
    params, ins, out = site.params, site.ins[0], site.outs[0]
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
            analysis.graph.union(ins[axis], out[axis])
        else:
            analysis.order([ins[axis], out[axis]])


def _scan_carry_provenance(
    analysis: Analysis, inner: Context, body, carry_in: Sequence, carry_out: Sequence
) -> None:
    """Walks a scan body until the integer-input provenance of its carry settles."""
    for _ in range(3):  # integer-input provenance may flow around the loop
        analysis.walk(inner, body)
        changed = False
        for var_in, atom_out in zip(carry_in, carry_out, strict=True):
            sources = analysis.derived_of(inner, atom_out)
            if sources - analysis.derived_of(inner, var_in):
                analysis.derived[(inner, var_in)] = sources | analysis.derived_of(inner, var_in)
                changed = True
        if not changed:
            break


def _scan(analysis: Analysis, site: Site) -> None:
    ctx, eqn, ins, outs, params = site.ctx, site.eqn, site.ins, site.outs, site.params
    body = params["jaxpr"].jaxpr
    n_consts, n_carry = params["num_consts"], params["num_carry"]
    n_in = len(eqn.invars)
    scanned_in = [i >= n_consts + n_carry for i in range(n_in)]
    scanned_out = [i >= n_carry for i in range(len(eqn.outvars))]
    # The scanned (time) axis is ordered: the carry threads through it in sequence.
    analysis.order(*[ins[i][:1] for i in range(n_in) if scanned_in[i]])
    analysis.order(*[outs[i][:1] for i in range(len(outs)) if scanned_out[i]])
    inner = Context()
    analysis.enter(ctx, eqn.invars, ins, body.invars, inner, scanned_in)
    carry_in = body.invars[n_consts : n_consts + n_carry]
    carry_out = body.outvars[:n_carry]
    _scan_carry_provenance(analysis, inner, body, carry_in, carry_out)
    analysis.tie_loop(inner, carry_in, carry_out)
    analysis.leave(ctx, inner, body.outvars, eqn.outvars, outs, scanned_out)


def _while(analysis: Analysis, site: Site) -> None:
    ctx, eqn, ins, params = site.ctx, site.eqn, site.ins, site.params
    n_cond, n_body = params["cond_nconsts"], params["body_nconsts"]
    cond, body = params["cond_jaxpr"].jaxpr, params["body_jaxpr"].jaxpr
    carry_atoms = eqn.invars[n_cond + n_body :]
    carry_nodes = ins[n_cond + n_body :]
    inner = Context()
    analysis.enter(ctx, eqn.invars[n_cond:], ins[n_cond:], body.invars, inner)
    analysis.walk(inner, body)
    analysis.leave(ctx, inner, body.outvars, eqn.outvars, site.outs)
    analysis.tie_loop(inner, body.invars[n_body:], body.outvars)
    cond_ctx = Context()
    analysis.enter(
        ctx,
        [*eqn.invars[:n_cond], *carry_atoms],
        [*ins[:n_cond], *carry_nodes],
        cond.invars,
        cond_ctx,
    )
    analysis.walk(cond_ctx, cond)


def _cond(analysis: Analysis, site: Site) -> None:
    ctx, eqn = site.ctx, site.eqn
    for branch in site.params["branches"]:
        inner = Context()
        analysis.enter(ctx, eqn.invars[1:], site.ins[1:], branch.jaxpr.invars, inner)
        analysis.walk(inner, branch.jaxpr)
        analysis.leave(ctx, inner, branch.jaxpr.outvars, eqn.outvars, site.outs)


RULES: dict[str, Rule] = {
    **dict.fromkeys(_ELEMENTWISE, _elementwise),
    **dict.fromkeys(_REDUCTIONS, _reduction),
    **dict.fromkeys(_ARG_REDUCTIONS, _arg_reduction),
    **dict.fromkeys(_CUMULATIVE, _cumulative),
    **dict.fromkeys(_REDUCE_WINDOWS, _reduce_window),
    "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "reshape": _reshape,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "gather": _gather,
    "iota": _iota,
    "slice": _slice,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "concatenate": _along_dimension,
    "sort": _along_dimension,
    "split": _along_axis,
    "rev": _rev,
    "pad": _pad,
    "scan": _scan,
    "while": _while,
    "cond": _cond,
}
"""Per primitive name, its rule. A primitive without one is followed into its body if it
has one (see :meth:`~lopt.nf.jaxpr_walk.Analysis.call`), else all its axes are ordered."""
