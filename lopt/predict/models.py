"""The weight-space predictors: invariant UNF, NFN, Deep Sets and STATNN.

Each is a flax module mapping one network's feature tree (leaves ``(*shape, 1)``) to a
scalar; vmap ``apply`` over a batch of networks.

* ``unf``: :class:`lopt.nf.InvariantNetwork` with UNF layers.
* ``nfn``: the same with NFN layers (conv spatial axes as channels; on non-conv weight
  spaces NFN and UNF coincide).
* ``deepsets``: per-parameter Dense layers, then the same invariant pooling and head.
* ``statnn``: per tensor, mean, variance and quantiles of its entries, concatenated, into
  an MLP (Unterthiner et al., 2020).

Which group the first three are invariant to is the ``symmetry`` option, as in the NFN
paper's NP and HNP variants: ``"np"`` permutes every id of the zoo's spec (hidden neurons
and the axes permuted by choice: input features, tokens, classes); ``"hnp"`` only the
hidden neurons, the other axes become channels (more parameters, no weight sharing
across inputs or classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import lopt.nf as nf

PyTree = Any
PREDICTORS = ("unf", "nfn", "deepsets", "statnn")
SYMMETRIES = ("np", "hnp")
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def symmetry_spec(spec: PyTree, symmetry: str) -> PyTree:
    """The spec of the group a predictor is invariant to (see :data:`SYMMETRIES`).

    Args:
        spec: the zoo's permutation spec.
        symmetry: ``"np"`` (the spec as it is) or ``"hnp"`` (hidden-neuron ids only; by-choice
            and spatial axes become ``None``).

    Returns:
        The spec to build the predictor on.
    """
    if symmetry not in SYMMETRIES:
        raise ValueError(f"unknown symmetry {symmetry!r}; expected one of {SYMMETRIES}")
    if symmetry == "np":
        return spec
    return nf.map_ids(spec, lambda perm_id: perm_id if nf.is_symmetry(perm_id) else None)


def tensor_statistics(features: PyTree) -> jax.Array:
    """Per tensor: mean, variance and the :data:`QUANTILES` of every channel, concatenated.

    Args:
        features: leaves ``(*shape, C)``.

    Returns:
        ``(num_tensors * 7 * C,)``.
    """
    rows = []
    for leaf in jax.tree_util.tree_leaves(features):
        flat = leaf.reshape(-1, leaf.shape[-1])
        quantiles = jnp.quantile(flat, jnp.asarray(QUANTILES), axis=0)
        rows.append(jnp.concatenate([flat.mean(0)[None], flat.var(0)[None], quantiles]).ravel())
    return jnp.concatenate(rows)


class StatNN(nn.Module):
    """STATNN: per-tensor statistics into an MLP.

    Attributes:
        head: widths of the MLP; the last is the output size.
    """

    head: Sequence[int]

    @nn.compact
    def __call__(self, features: PyTree) -> jax.Array:
        """Maps a feature tree (leaves ``(*shape, C)``) to ``(head[-1],)``."""
        h = tensor_statistics(features)
        for index, width in enumerate(self.head):
            h = nn.Dense(width, name=f"head_{index}")(h)
            if index < len(self.head) - 1:
                h = nn.relu(h)
        return h


def make_predictor(
    kind: str,
    spec: PyTree,
    *,
    width: int = 16,
    depth: int = 2,
    head: Sequence[int] = (64, 1),
    symmetry: str = "np",
) -> nn.Module:
    """Builds a predictor.

    Args:
        kind: one of :data:`PREDICTORS`.
        spec: the zoo's permutation spec.
        width: channels of every equivariant (UNF/NFN) or per-parameter (Deep Sets) layer.
        depth: how many such layers.
        head: widths of the MLP head; the last must be 1 (a scalar prediction).
        symmetry: the group UNF, NFN and Deep Sets are invariant to (:data:`SYMMETRIES`);
            STATNN's per-tensor statistics are invariant to every permutation of a tensor.

    Returns:
        A flax module ``features -> (1,)``.
    """
    if kind not in PREDICTORS:
        raise ValueError(f"unknown predictor {kind!r}; expected one of {PREDICTORS}")
    if not head or head[-1] != 1:
        raise ValueError(f"the head must end in one output, got {tuple(head)}")
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be positive, got {width}, {depth}")
    spec = symmetry_spec(spec, symmetry)
    layers = (width,) * depth
    head = tuple(head)
    if kind == "statnn":
        return StatNN(head)
    if kind == "deepsets":
        return nf.InvariantNetwork(spec, equivariant=(), pointwise=layers, head=head)
    return nf.InvariantNetwork(spec, equivariant=layers, head=head, kind=kind)
