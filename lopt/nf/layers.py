"""Permutation-equivariant layers over weight spaces, and networks stacked from them.

Every layer takes a *weight-space feature tree*: a pytree matching a permutation spec
whose leaves carry one trailing channel axis, ``(*tensor_shape, C)``, and returns the
same structure with its own number of channels.

* :class:`UNFLinear`: the maximal equivariant linear layer (UNF paper, Algorithm 1),
  run from a compiled :class:`~lopt.nf.plan.Plan`.
* :class:`PointwiseDense`: a Dense layer on the channels of every entry (Deep Sets),
  applied to all tensors at once as one ``(N, C)`` matrix.
* :class:`ContextDense`: a Dense layer on ``[x, context]`` where ``context`` is one vector
  shared by every entry, without broadcasting it to the entries.
* :class:`InvariantPool`: the mean over every permuted axis, concatenated over tensors.
* :class:`NeuralFunctional`: per-parameter layers, then equivariant layers.
* :class:`InvariantNetwork`: a neural functional, invariant pooling and an MLP head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lopt.nf import spec as nfspec
from lopt.nf.coefficients import kernel_name
from lopt.nf.ops import all_reductions, embed_sum, fold, placement, unfold
from lopt.nf.plan import Group, Reduction, TensorLayout
from lopt.nf.stacking import (
    StackedFeatures,
    plan_for,
    spec_axes,
    stack_features,
    to_matrix,
    unstack_features,
)
from lopt.nf.xla_boundary import materialize

Array = jax.Array
PyTree = Any


def nfn_spec(spec: nfspec.Spec) -> nfspec.Spec:
    """The spec NFN uses: :class:`~lopt.nf.spec.Spatial` axes become channels (``None``)."""
    return nfspec.map_ids(
        spec, lambda perm_id: None if isinstance(perm_id, nfspec.Spatial) else perm_id
    )


def _scaled_normal(stddevs: np.ndarray) -> Callable:
    """A normal initializer with one standard deviation per row."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.normal(key, shape, dtype) * jnp.asarray(stddevs, dtype)[:, None]

    return init


def _sources(stacked: StackedFeatures) -> list[Array]:
    """Every plan source: its reductions of the folded inputs, concatenated over channels.

    Args:
        stacked: the layer's input.

    Returns:
        Per source of ``stacked.plan``, ``(*kept_block_sizes, Σ C_in F_m)``.
    """
    plan = stacked.plan
    folded = []
    for tensor, layout in zip(stacked.tensors, plan.tensors, strict=True):
        tensor = fold(tensor, layout)
        folded.append(materialize(tensor) if len(layout.ids) > 1 else tensor)
    cache = all_reductions(folded, plan)

    def reduced(reduction: Reduction) -> Array:
        kept_sorted = tuple(sorted(reduction.kept))
        value = cache[Reduction(reduction.tensor, reduction.partition, kept_sorted)]
        if kept_sorted != reduction.kept:
            value = jnp.transpose(
                value, (*[kept_sorted.index(b) for b in reduction.kept], value.ndim - 1)
            )
        return value

    return [
        jnp.concatenate([reduced(reduction) for reduction in source], axis=-1)
        for source in plan.sources
    ]


def _apply_kernel(
    source: Array, kernel: Array, users: Sequence[tuple[int, int]], out_channels: Sequence[int]
) -> dict[tuple[int, int], Array]:
    """One source's matmul, split into the outputs of the groups that read it.

    Args:
        source: ``(*kept_block_sizes, C_source)``.
        kernel: ``(Σ out channels of users, C_source)``.
        users: the ``(output tensor, group)`` pairs that read the source, in kernel order.
        out_channels: output channels per tensor of the plan.

    Returns:
        Per user, ``(*kept_block_sizes, out_channels[tensor])``.
    """
    # kernel stored (out, in): its gradient then needs no transposing copy
    product = jax.lax.dot_general(
        source, kernel.astype(source.dtype), (((source.ndim - 1,), (1,)), ((), ()))
    )
    splits = np.cumsum([out_channels[out] for out, _ in users])[:-1].tolist()
    return dict(zip(users, jnp.split(product, splits, axis=-1), strict=True))


def _output(
    zs: Sequence[Array],
    groups: Sequence[Group],
    layout: TensorLayout,
    bias: Array | None,
    features: int,
) -> Array:
    """One output tensor: its groups' outputs, biased, placed, summed and unfolded.

    Args:
        zs: per group, its matmul's output ``(*carried_shape, F features)``.
        groups: the tensor's groups.
        layout: the tensor's layout.
        bias: ``(groups with a bias, F features)``, or ``None``.
        features: the layer's output channels.

    Returns:
        ``(*tensor_shape, features)``.
    """
    biased = []
    bias_index = 0
    for z, group in zip(zs, groups, strict=True):
        if bias is not None and group.has_bias:
            z = z + bias[bias_index].astype(z.dtype)
            bias_index += 1
        biased.append(z)
    placements = tuple(placement(group, layout) for group in groups)
    total = embed_sum(tuple(biased), placements, layout.permuted_shape)
    return unfold(total, layout, features)


class UNFLinear(nn.Module):
    """The maximal permutation-equivariant linear layer over a weight space.

    For the permutation spec ``spec`` and every output tensor ``ℓ`` it computes
    ``Σ_m Σ_{P valid for (ℓ, m)} basis_P(x_m) Θ_{ℓ,m,P} + Σ_{Q} bias_{ℓ,Q}``, where ``P``
    ranges over the valid partitions of the permuted axes of ``ℓ`` and ``m`` and ``Q``
    over the partitions of the axes of ``ℓ`` (the equivariant constants). Axes whose id is
    ``None`` are folded into the channels.

    Parameters: one kernel per plan source (``kernel_source_<s>``, its users' ``Θ`` blocks
    stacked, see :func:`~lopt.nf.coefficients.kernel_blocks`), so every matmul reads its
    kernel as stored; one bias per tensor of the stacked plan (``bias_<t>``, a row per
    output partition).

    Attributes:
        spec: the permutation spec of the weight space.
        features: output channels per entry.
        use_bias: whether to add the equivariant bias.
        kernel_scale: the variance of the initial output per channel, for unit-variance
            inputs (the fan-in counts all terms of an output tensor together).
    """

    spec: Any
    features: int
    use_bias: bool = True
    kernel_scale: float = 1.0

    @nn.compact
    def __call__(self, x: PyTree) -> PyTree:
        """Applies the layer.

        Args:
            x: feature tree matching ``spec``; leaves ``(*tensor_shape, C_in)``; or the
                same as :class:`StackedFeatures` (from :func:`stack_features` with ``spec``).

        Returns:
            The same structure (stacked if ``x`` was); leaves ``(*tensor_shape, features)``.
        """
        stacked = x if isinstance(x, StackedFeatures) else stack_features(self.spec, x)
        if stacked.spec_axes != spec_axes(self.spec):
            raise ValueError(
                "the stacked features were built for another spec than this layer's "
                f"(spec tuples {stacked.spec_axes} vs {spec_axes(self.spec)})"
            )
        plan = stacked.plan
        sources = _sources(stacked)
        out_channels = [self.features * layout.fixed_size for layout in plan.tensors]
        fan_in = [
            sum(sources[group.source].shape[-1] for group in groups) for groups in plan.groups
        ]

        results: dict[tuple[int, int], Array] = {}
        for index, (source, users) in enumerate(zip(sources, plan.source_users, strict=True)):
            stddevs = np.concatenate(
                [
                    np.full(out_channels[out], math.sqrt(self.kernel_scale / fan_in[out]))
                    for out, _ in users
                ]
            )
            kernel = self.param(
                kernel_name(index),
                _scaled_normal(stddevs.astype(np.float32)),
                (len(stddevs), source.shape[-1]),
                jnp.float32,
            )
            results.update(_apply_kernel(source, kernel, users, out_channels))

        outputs = []
        for out, (layout, groups) in enumerate(zip(plan.tensors, plan.groups, strict=True)):
            bias = None
            if self.use_bias:
                bias = self.param(
                    f"bias_{out}",
                    nn.initializers.zeros,
                    (sum(group.has_bias for group in groups), out_channels[out]),
                    jnp.float32,
                )
            zs = [results[(out, group_index)] for group_index in range(len(groups))]
            outputs.append(_output(zs, groups, layout, bias, self.features))
        result = stacked.replace(tensors=tuple(outputs))
        return result if isinstance(x, StackedFeatures) else unstack_features(result)


class PointwiseDense(nn.Module):
    """A Dense layer on the channels of every entry, shared by all tensors (Deep Sets).

    Attributes:
        features: output channels.
    """

    features: int

    @nn.compact
    def __call__(self, x: PyTree) -> PyTree:
        matrix, from_matrix = to_matrix(x)
        return from_matrix(nn.Dense(self.features, name="dense")(matrix))


class ContextDense(nn.Module):
    """A Dense layer on the channels ``[x, context]`` of every row, ``context`` shared by all.

    Equal to ``nn.Dense`` applied to ``x`` with ``context`` broadcast and appended as extra
    channels, with the same parameters (``kernel`` ``(C + K, features)``, ``bias``), the same
    initialisation and the same parameter names, but the context's product with its rows
    of the kernel is computed once, as part of the bias, instead of once per row.

    Attributes:
        features: output channels.
        use_bias: whether the layer has a bias.
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, matrix: Array, context: Array) -> Array:
        """Maps ``(N, C)`` rows and a ``(K,)`` context to ``(N, features)``."""
        channels = matrix.shape[-1]
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (channels + context.shape[-1], self.features),
            jnp.float32,
        )
        shift = context.astype(kernel.dtype) @ kernel[channels:]
        if self.use_bias:
            shift = shift + self.param(
                "bias", nn.initializers.zeros_init(), (self.features,), jnp.float32
            )
        return matrix @ kernel[:channels] + shift


def append_context(x: PyTree, context: Array) -> PyTree:
    """Every tensor ``(*shape, C)`` of a feature tree with ``context`` ``(K,)`` appended to
    each entry's channels: ``(*shape, C + K)``."""

    def append(leaf: Array) -> Array:
        broadcast = jnp.broadcast_to(context.astype(leaf.dtype), (*leaf.shape[:-1], context.size))
        return jnp.concatenate([leaf, broadcast], axis=-1)

    return jax.tree_util.tree_map(append, x)


class InvariantPool(nn.Module):
    """Mean over all permuted axes of every tensor, concatenated: an invariant vector.

    Fixed (``None``) axes are not pooled: they stay as features.

    Attributes:
        spec: the permutation spec.
    """

    spec: Any

    def __call__(self, x: PyTree) -> Array:
        """Pools ``x`` (leaves ``(*tensor_shape, C)``) into a vector of ``Σ_ℓ F_ℓ C``."""
        plan = plan_for(self.spec, x)
        pooled = []
        for leaf, layout in zip(jax.tree_util.tree_leaves(x), plan.tensors, strict=True):
            folded = fold(leaf, layout)
            pooled.append(jnp.mean(folded, axis=tuple(range(len(layout.ids)))))
        return jnp.concatenate(pooled)


_KINDS = ("unf", "nfn")


class NeuralFunctional(nn.Module):
    """Per-parameter layers followed by equivariant layers.

    Deep Sets is ``pointwise=(32, 32, 32, 1)``; the UNF paper's learned-optimizer network
    is ``pointwise=(32, 32, 32), equivariant=(1,)``; a deep UNF is
    ``equivariant=(32, 32, 32, 1)``. ``kind="nfn"`` builds NFN's layers: spatial axes
    (:class:`~lopt.nf.spec.Spatial`) become channels; on MLP weight spaces NFN and UNF
    coincide.

    Attributes:
        spec: permutation spec of the weight space.
        pointwise: widths of the per-parameter Dense layers (run on one ``(N, C)`` matrix).
        equivariant: widths of the equivariant layers that follow.
        kind: ``"unf"`` or ``"nfn"``.
        activation: applied between layers, not after the last.
        use_bias: whether layers have biases.
    """

    spec: Any
    pointwise: Sequence[int] = ()
    equivariant: Sequence[int] = ()
    kind: str = "unf"
    activation: Callable[[Array], Array] = nn.relu
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: PyTree, context: Array | None = None) -> PyTree:
        """Maps a feature tree ``(*shape, C_in)`` to ``(*shape, widths[-1])``.

        Args:
            x: the weight-space feature tree.
            context: optional ``(K,)`` channels shared by every entry of every tensor (a
                step count's embedding, say). The network reads them as ``K`` more input
                channels after ``C_in``; when its first layer is per-parameter they enter
                through that layer's bias (:class:`ContextDense`) and are never broadcast.
        """
        if self.kind not in _KINDS:
            raise ValueError(
                f"unknown neural functional kind {self.kind!r}; expected one of {_KINDS}"
            )
        widths = [*self.pointwise, *self.equivariant]
        if not widths:
            raise ValueError("a neural functional needs at least one layer")
        last = len(widths) - 1
        layer = 0
        spec = nfn_spec(self.spec) if self.kind == "nfn" else self.spec
        if context is not None:
            context = jnp.asarray(context)
            if context.ndim != 1:
                raise ValueError(f"context must be one vector (K,), got shape {context.shape}")
            if not self.pointwise:
                x = append_context(x, context)
                context = None
        if self.equivariant:
            # stacked once, before the pointwise layers: they then produce the stacked
            # tensors directly, and no equivariant layer stacks or unstacks
            x = stack_features(spec, x)
        if self.pointwise:
            matrix, from_matrix = to_matrix(x)
            for width in self.pointwise:
                name = f"pointwise_{layer}"
                if layer == 0 and context is not None:
                    matrix = ContextDense(width, use_bias=self.use_bias, name=name)(matrix, context)
                else:
                    matrix = nn.Dense(width, use_bias=self.use_bias, name=name)(matrix)
                if layer < last:
                    matrix = self.activation(matrix)
                layer += 1
            x = from_matrix(matrix)
        for width in self.equivariant:
            x = UNFLinear(spec, width, use_bias=self.use_bias, name=f"equivariant_{layer}")(x)
            if layer < last:
                x = jax.tree_util.tree_map(self.activation, x)
            layer += 1
        return unstack_features(x) if isinstance(x, StackedFeatures) else x


class InvariantNetwork(nn.Module):
    """Predicts a property of a network from its weights, invariant to its permutations.

    Equivariant layers, then :class:`InvariantPool`, then an MLP head.

    Attributes:
        spec: permutation spec of the weight space.
        equivariant: widths of the equivariant layers (activation after each).
        head: widths of the MLP head; the last is the output size.
        pointwise: widths of per-parameter layers before the equivariant ones.
        kind: ``"unf"`` or ``"nfn"``.
        activation: between layers.
    """

    spec: Any
    equivariant: Sequence[int]
    head: Sequence[int]
    pointwise: Sequence[int] = ()
    kind: str = "unf"
    activation: Callable[[Array], Array] = nn.relu

    @nn.compact
    def __call__(self, x: PyTree) -> Array:
        """Maps a feature tree ``(*shape, C_in)`` to a vector of ``head[-1]`` outputs."""
        if not self.head:
            raise ValueError("an invariant network needs at least one head layer")
        features = NeuralFunctional(
            self.spec, self.pointwise, self.equivariant, self.kind, self.activation, name="body"
        )(x)
        features = jax.tree_util.tree_map(self.activation, features)
        spec = nfn_spec(self.spec) if self.kind == "nfn" else self.spec
        h = InvariantPool(spec)(features)
        for index, width in enumerate(self.head):
            h = nn.Dense(width, name=f"head_{index}")(h)
            if index < len(self.head) - 1:
                h = self.activation(h)
        return h
