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

from lopt.nf.coefficients import kernel_blocks
from lopt.nf.ops import fold, place, placement, reduce, unfold
from lopt.nf.stacking import stack_features, unstack_features

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
    stacked = stack_features(spec, x)
    plan = stacked.plan
    folded = [
        fold(tensor, layout) for tensor, layout in zip(stacked.tensors, plan.tensors, strict=True)
    ]
    in_channels = stacked.tensors[0].shape[-1]
    outputs = []
    for out_index, layout in enumerate(plan.tensors):
        bias = params.get(f"bias_{out_index}")
        out_channels = features * layout.fixed_size
        total = jnp.zeros((*layout.permuted_shape, out_channels), folded[0].dtype)
        bias_row = 0
        for group, name, rows, columns in kernel_blocks(plan, out_index, in_channels, features):
            for term, term_columns in zip(group.terms, columns, strict=True):
                reduction = term.reduction
                source = plan.tensors[reduction.tensor]
                kept = tuple(sorted(reduction.kept))
                reduced = reduce(
                    folded[reduction.tensor],
                    type(reduction)(reduction.tensor, reduction.partition, kept),
                    source,
                )
                order = [kept.index(block) for block in reduction.kept]
                reduced = jnp.transpose(reduced, (*order, reduced.ndim - 1))
                z = reduced @ params[name][rows, term_columns].T
                total = total + place(z, placement(group, layout), layout.permuted_shape)
            if bias is not None and group.has_bias:
                total = total + place(
                    bias[bias_row], placement(group, layout), layout.permuted_shape
                )
                bias_row += 1
        outputs.append(unfold(total, layout, features))
    return unstack_features(stacked.replace(tensors=tuple(outputs)))


def parameter_count(params: PyTree) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
