"""Algorithm 1 of the UNF paper computed term by term, for benchmarks and cross-checks.

:func:`per_term_apply` evaluates the same function as :class:`~lopt.nf.UNFLinear`, with
the same parameters, the direct way: for every output tensor, every input tensor and
every valid partition it reduces the input, multiplies by that term's coefficients and
embeds the result. Nothing is shared between terms. It is what the grouped plan is
measured against; use :class:`~lopt.nf.UNFLinear` for real work.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lopt.nf.layers import _fold, _place, _placement, _reduce, _unfold, plan_for

PyTree = Any


def per_term_apply(spec: Any, params: dict, x: PyTree, features: int) -> PyTree:
    """Applies a UNF layer term by term.

    Args:
        spec: the permutation spec.
        params: the ``params`` collection of a :class:`~lopt.nf.UNFLinear` built with
            ``spec`` and ``features``.
        x: feature tree, leaves ``(*tensor_shape, C)``.
        features: the layer's output channels.

    Returns:
        The layer's output, leaves ``(*tensor_shape, features)``.
    """
    plan = plan_for(spec, x)
    leaves, treedef = jax.tree_util.tree_flatten(x)
    folded = [_fold(leaf, layout) for leaf, layout in zip(leaves, plan.tensors, strict=True)]
    outputs = []
    for out_index, (layout, groups) in enumerate(zip(plan.tensors, plan.groups, strict=True)):
        kernel = params[f"kernel_{out_index}"]
        bias = params.get(f"bias_{out_index}")
        out_channels = features * layout.fixed_size
        total = jnp.zeros((*layout.permuted_shape, out_channels), folded[0].dtype)
        row, bias_row = 0, 0
        for group in groups:
            for term in group.terms:
                reduction = term.reduction
                source = plan.tensors[reduction.tensor]
                kept = tuple(sorted(reduction.kept))
                reduced = _reduce(
                    folded[reduction.tensor],
                    type(reduction)(reduction.tensor, reduction.partition, kept),
                    source,
                )
                order = [kept.index(block) for block in reduction.kept]
                reduced = jnp.transpose(reduced, (*order, reduced.ndim - 1))
                width = reduced.shape[-1]
                z = reduced @ kernel[row : row + width]
                row += width
                total = total + _place(z, _placement(group, layout), layout.permuted_shape)
            if bias is not None and group.has_bias:
                total = total + _place(
                    bias[bias_row], _placement(group, layout), layout.permuted_shape
                )
                bias_row += 1
        if row != kernel.shape[0]:
            raise ValueError(f"params do not match the plan of tensor {layout.path}")
        outputs.append(_unfold(total, layout, features))
    return jax.tree_util.tree_unflatten(treedef, outputs)


def parameter_count(params: PyTree) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
