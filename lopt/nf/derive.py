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

:func:`lopt.tasks.check_symmetry` verifies a spec numerically. The walk over the jaxpr is
:mod:`lopt.nf.jaxpr_walk`, the rule of each primitive :mod:`lopt.nf.primitive_rules`, and
the union-find :mod:`lopt.nf.axis_graph`.

A layer of width one is a degenerate case: reshapes that add or drop unit axes cannot say
which unit axis carries the neuron, so such an axis may get an id of its own instead of
the id of its layer. That is still a true symmetry (the only permutation of one neuron is
the identity), but a hand-written spec would share the id.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax

from lopt.nf import spec as nfspec
from lopt.nf.axis_graph import ORDERED, SPATIAL
from lopt.nf.jaxpr_walk import Analysis, Context, is_integer, shape_of
from lopt.nf.primitive_rules import RULES

PyTree = Any
LeavesWithPaths = Sequence[tuple[Any, Any]]


def _leaf_name(path: Any, prefix: str) -> str:
    suffix = jax.tree_util.keystr(path, simple=True, separator="/")
    return f"{prefix}/{suffix}" if suffix else prefix


def _tag_by_choice(
    analysis: Analysis, ctx: Context, leaves: LeavesWithPaths, atoms: Sequence[Any], prefix: str
) -> None:
    """Tags every axis of the model's inputs (or outputs) with its by-choice name."""
    for (path, _), atom in zip(leaves, atoms, strict=True):
        name = _leaf_name(path, prefix)
        for axis, node in enumerate(analysis.nodes(ctx, atom)):
            analysis.graph.tag(node, ("choice", f"{name}/axis{axis}"))


def _representatives(
    analysis: Analysis, ctx: Context, param_leaves: LeavesWithPaths, param_vars: Sequence
) -> dict[Any, str]:
    """Per class root, the name of its first parameter axis in order of use."""
    members: list[tuple[tuple, Any, str]] = []
    for leaf_index, ((path, _), var) in enumerate(zip(param_leaves, param_vars, strict=True)):
        for axis, node in enumerate(analysis.nodes(ctx, var)):
            rank = len(shape_of(var))
            order = (analysis.first_use.get(leaf_index, math.inf), -rank, leaf_index, axis)
            name = f"{_leaf_name(path, '')[1:] or 'params'}:{axis}"
            members.append((order, analysis.graph.find(node), name))
    representative: dict[Any, str] = {}
    for _, root, name in sorted(members, key=lambda m: m[0]):
        representative.setdefault(root, name)
    return representative


def _resolve(tags: dict[Any, int], representative: str) -> nfspec.PermId | None:
    """The id of a class with ``tags``, whose first parameter axis is ``representative``."""
    if ORDERED in tags:
        return nfspec.Spatial(representative) if SPATIAL in tags else None
    choices = sorted((order, tag[1]) for tag, order in tags.items() if isinstance(tag, tuple))
    if choices:
        return nfspec.ByChoice(choices[0][1])
    return representative


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

    analysis = Analysis(RULES)
    top = Context()
    param_vars = jaxpr.invars[: len(param_leaves)]
    for index, var in enumerate(param_vars):
        analysis.param_of[(top, var)] = index
    input_vars = jaxpr.invars[len(param_leaves) :]
    _tag_by_choice(analysis, top, input_leaves, input_vars, "input")
    for (path, _), var in zip(input_leaves, input_vars, strict=True):
        if is_integer(var):  # gather indices: the values they index are chosen by the input
            analysis.derived[(top, var)] = frozenset({_leaf_name(path, "input")})
    analysis.walk(top, jaxpr, closed.consts)
    _tag_by_choice(analysis, top, output_leaves, jaxpr.outvars, "output")

    if warn and analysis.unmodelled:
        warnings.warn(
            f"derive_spec: primitives {sorted(analysis.unmodelled)} are not modelled; the "
            "axes they touch are treated as ordered (never permuted)",
            stacklevel=2,
        )

    class_tags = analysis.graph.class_tags()
    representative = _representatives(analysis, top, param_leaves, param_vars)
    leaves = []
    for var in param_vars:
        roots = [analysis.graph.find(node) for node in analysis.nodes(top, var)]
        leaves.append(
            tuple(_resolve(class_tags.get(root, {}), representative[root]) for root in roots)
        )
    spec = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)
    nfspec.validate(spec, params)
    return spec
