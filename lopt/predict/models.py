"""The predictors: invariant UNF and NFN, two Deep Sets, STATNN, and a weightless baseline.

Each is a flax module mapping one network's inputs to a ``(1,)`` prediction; vmap
``apply`` over a batch of networks. The weight-space ones read a feature tree (leaves
``(*shape, 1)``):

* ``unf``: :class:`lopt.nf.InvariantNetwork` with UNF layers.
* ``nfn``: the same with NFN layers (conv spatial axes as channels; on non-conv weight
  spaces NFN and UNF coincide).
* ``deepsets_per_tensor``: per-parameter Dense layers, then the invariant pooling of UNF
  (a mean over each tensor's permuted axes, the tensors' vectors concatenated) and the
  head: a learned STATNN, whose pooled features keep which tensor they came from.
* ``deepsets_single_set``: the papers' kind, :class:`SingleSetDeepSets`: every entry of
  every tensor is one element of a single set, pooled by one mean.
* ``statnn``: per tensor, mean, variance and quantiles of its entries, concatenated, into
  an MLP (Unterthiner et al., 2020).

``hyperparameters`` (:class:`HyperparameterMLP`) reads no weight: an MLP on the zoo's
stored training hyperparameters (:mod:`lopt.predict.hyperparameters`), the part of a
metric visible without the weights.

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
PREDICTORS = (
    "unf",
    "nfn",
    "deepsets_per_tensor",
    "deepsets_single_set",
    "statnn",
    "hyperparameters",
)
WEIGHTLESS = ("hyperparameters",)
"""Predictors that read the zoo's hyperparameters, not the weights."""
ALIASES = {"deepsets": "deepsets_per_tensor"}
"""Former names of predictors, still accepted."""
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


class SingleSetDeepSets(nn.Module):
    """Deep Sets over one set holding every entry of every tensor.

    Each entry ``x`` of tensor ``t`` becomes ``φ(x, t)``: a first Dense layer of its
    channels plus a learned per-tensor offset (the same as a one-hot of ``t`` among its
    inputs: without it a bias and a kernel entry would look alike), ReLU, and further
    Dense layers shared by all entries. One mean over all entries of all tensors, each
    tensor weighted by its size, goes into the MLP head. Invariant to every permutation
    of the entries within each tensor, so to every permutation the spec allows.

    Attributes:
        width: channels of every per-entry layer.
        depth: number of per-entry layers.
        head: widths of the MLP head; the last is the output size.
    """

    width: int
    depth: int
    head: Sequence[int]

    @nn.compact
    def __call__(self, features: PyTree) -> jax.Array:
        """Maps a feature tree (leaves ``(*shape, C)``) to ``(head[-1],)``."""
        leaves = jax.tree_util.tree_leaves(features)
        offsets = self.param("tensor_offsets", nn.initializers.zeros, (len(leaves), self.width))
        layers = [nn.Dense(self.width, name=f"entry_{index}") for index in range(self.depth)]
        total, count = jnp.zeros((self.width,)), 0
        for index, leaf in enumerate(leaves):
            h = nn.relu(layers[0](leaf.reshape(-1, leaf.shape[-1])) + offsets[index])
            for layer in layers[1:]:
                h = nn.relu(layer(h))
            total, count = total + h.sum(axis=0), count + h.shape[0]
        h = total / count
        for index, width in enumerate(self.head):
            h = nn.Dense(width, name=f"head_{index}")(h)
            if index < len(self.head) - 1:
                h = nn.relu(h)
        return h


class HyperparameterMLP(nn.Module):
    """An MLP on a network's ``(H,)`` standardised hyperparameters (no weights).

    Attributes:
        head: widths of the MLP; the last is the output size.
    """

    head: Sequence[int]

    @nn.compact
    def __call__(self, hyperparameters: jax.Array) -> jax.Array:
        """Maps ``(H,)`` to ``(head[-1],)``."""
        h = hyperparameters
        for index, width in enumerate(self.head):
            h = nn.Dense(width, name=f"head_{index}")(h)
            if index < len(self.head) - 1:
                h = nn.relu(h)
        return h


def canonical_kind(kind: str) -> str:
    """``kind`` with a former name (:data:`ALIASES`) replaced by the current one.

    Raises:
        ValueError: ``kind`` is no predictor.
    """
    kind = ALIASES.get(kind, kind)
    if kind not in PREDICTORS:
        raise ValueError(f"unknown predictor {kind!r}; expected one of {PREDICTORS}")
    return kind


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
        kind: one of :data:`PREDICTORS` (or :data:`ALIASES`).
        spec: the zoo's permutation spec (unused by ``hyperparameters``).
        width: channels of every equivariant (UNF/NFN) or per-parameter (Deep Sets) layer.
        depth: how many such layers.
        head: widths of the MLP head; the last must be 1 (a scalar prediction).
        symmetry: the group UNF, NFN and the per-tensor Deep Sets are invariant to
            (:data:`SYMMETRIES`); STATNN's statistics and the single-set Deep Sets are
            invariant to every permutation of a tensor's entries.

    Returns:
        A flax module ``features -> (1,)`` (``hyperparameters``: ``(H,) -> (1,)``).
    """
    kind = canonical_kind(kind)
    if not head or head[-1] != 1:
        raise ValueError(f"the head must end in one output, got {tuple(head)}")
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be positive, got {width}, {depth}")
    if symmetry not in SYMMETRIES:
        raise ValueError(f"unknown symmetry {symmetry!r}; expected one of {SYMMETRIES}")
    head = tuple(head)
    if kind == "hyperparameters":
        return HyperparameterMLP(head)
    if kind == "statnn":
        return StatNN(head)
    if kind == "deepsets_single_set":
        return SingleSetDeepSets(width, depth, head)
    spec = symmetry_spec(spec, symmetry)
    layers = (width,) * depth
    if kind == "deepsets_per_tensor":
        return nf.InvariantNetwork(spec, equivariant=(), pointwise=layers, head=head)
    return nf.InvariantNetwork(spec, equivariant=layers, head=head, kind=kind)
