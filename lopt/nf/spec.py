"""Permutation specs: which neuron permutation acts on which axis of every weight tensor.

A *spec* is a pytree with the same structure as a params pytree. Each leaf is a tuple
with one entry per axis of the matching tensor:

* a hashable *permutation id* (``"h1"``, ``3``, ...): every axis carrying the same id is
  permuted by the same permutation. Plain ids denote **true symmetries**: hidden neurons
  whose permutation leaves the network's function unchanged.
* :class:`ByChoice` ``(name)``: an axis permuted by *modelling choice* rather than by a
  symmetry of the network (an MLP's input pixels or output classes, as in the UNF paper).
  The network function does change under these permutations; a neural functional is
  still made equivariant to them to share weights.
* :class:`Spatial` ``(name)``: a :class:`ByChoice` id on a spatial axis (a conv kernel's
  height or width). NFN folds these axes into channels instead of permuting them.
* ``None``: an axis that is never permuted (a vocabulary axis one wants fixed, a
  positional axis). Neural functionals treat such axes as extra channels.

Example (flax ``Dense`` stores kernels as ``(in, out)``)::

    spec = {
        "Dense_0": {"kernel": (ByChoice("in"), "h"), "bias": ("h",)},
        "Dense_1": {"kernel": ("h", ByChoice("out")), "bias": (ByChoice("out"),)},
    }
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PermId = Hashable
Axes = tuple  # tuple[PermId | None, ...]
Spec = Any  # pytree with Axes leaves
PyTree = Any


class SpecError(ValueError):
    """A permutation spec is malformed or does not match the tree it describes."""


@dataclasses.dataclass(frozen=True, order=True)
class ByChoice:
    """A permutation id applied by modelling choice rather than by a symmetry.

    Attributes:
        name: any hashable name; two ``ByChoice`` with equal names are the same id.
    """

    name: Hashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclasses.dataclass(frozen=True, order=True, repr=False)
class Spatial(ByChoice):
    """A by-choice id on a spatial axis (conv kernel height/width); NFN folds it into channels."""


def is_symmetry(perm_id: PermId | None) -> bool:
    """True for ids whose permutation is a true symmetry of the network (hidden neurons)."""
    return perm_id is not None and not isinstance(perm_id, ByChoice)


def is_axes(node: Any) -> bool:
    """True for a spec leaf: a tuple of permutation ids (``None`` allowed)."""
    return isinstance(node, tuple) and not any(
        isinstance(entry, (tuple, list, dict, Mapping)) for entry in node
    )


def spec_leaves_with_paths(spec: Spec) -> list[tuple[str, Axes]]:
    """Flattens a spec into ``(path, axes)`` pairs in the tree's canonical leaf order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(spec, is_leaf=is_axes)
    return [(jax.tree_util.keystr(path), axes) for path, axes in flat]


def tree_leaves_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def _check_axes(path: str, axes: Any) -> None:
    if not isinstance(axes, tuple):
        raise SpecError(
            f"spec leaf at {path or '<root>'} is {axes!r}; expected a tuple with one "
            "permutation id (or None) per tensor axis"
        )
    for position, entry in enumerate(axes):
        try:
            hash(entry)
        except TypeError as err:
            raise SpecError(
                f"spec leaf at {path}, axis {position}: id {entry!r} is not hashable"
            ) from err


def validate(spec: Spec, tree: PyTree | None = None, *, channel_axis: bool = False) -> None:
    """Checks a spec on its own and, if ``tree`` is given, against that tree.

    Args:
        spec: the permutation spec.
        tree: optional params (or weight-space features) pytree of arrays, or of
            ``jax.ShapeDtypeStruct``.
        channel_axis: whether every tensor of ``tree`` carries one trailing channel axis
            that is not described by the spec.

    Raises:
        SpecError: naming the tensor path and axis on an empty spec, a leaf that is not a
            tuple of hashable ids, a structure mismatch with ``tree``, a tuple whose length
            differs from the tensor's rank, or one id used on axes of different sizes.
    """
    leaves = spec_leaves_with_paths(spec)
    if not leaves:
        raise SpecError("the permutation spec is empty: it describes no tensor")
    for path, axes in leaves:
        _check_axes(path, axes)
    if tree is None:
        return
    tensors = tree_leaves_with_paths(tree)
    spec_paths = [path for path, _ in leaves]
    tree_paths = [path for path, _ in tensors]
    if spec_paths != tree_paths:
        missing = sorted(set(tree_paths) - set(spec_paths))
        extra = sorted(set(spec_paths) - set(tree_paths))
        raise SpecError(
            "the spec's structure does not match the tree's: "
            f"tensors without a spec entry: {missing or 'none'}; "
            f"spec entries without a tensor: {extra or 'none'}"
        )
    offset = 1 if channel_axis else 0
    sizes: dict[PermId, tuple[int, str, int]] = {}
    for (path, axes), (_, tensor) in zip(leaves, tensors, strict=True):
        shape = tuple(np.shape(tensor)) if not hasattr(tensor, "shape") else tuple(tensor.shape)
        if len(shape) != len(axes) + offset:
            what = " plus one channel axis" if channel_axis else ""
            raise SpecError(
                f"tensor {path} has shape {shape} (rank {len(shape)}) but its spec "
                f"{axes!r} describes {len(axes)} axes{what}"
            )
        for position, perm_id in enumerate(axes):
            if perm_id is None:
                continue
            size = shape[position]
            if perm_id in sizes and sizes[perm_id][0] != size:
                other_size, other_path, other_axis = sizes[perm_id]
                raise SpecError(
                    f"permutation id {perm_id!r} is used on axes of different sizes: "
                    f"{path} axis {position} has size {size}, "
                    f"{other_path} axis {other_axis} has size {other_size}"
                )
            sizes.setdefault(perm_id, (size, path, position))


def perm_sizes(spec: Spec, tree: PyTree) -> dict[PermId, int]:
    """Maps every permutation id of a (validated) spec to the size of the axes it acts on."""
    sizes: dict[PermId, int] = {}
    for (_, axes), (_, tensor) in zip(
        spec_leaves_with_paths(spec), tree_leaves_with_paths(tree), strict=True
    ):
        for position, perm_id in enumerate(axes):
            if perm_id is not None:
                sizes[perm_id] = int(tensor.shape[position])
    return sizes


def perm_ids(spec: Spec, predicate: Callable[[PermId], bool] | None = None) -> list[PermId]:
    """All permutation ids of a spec in order of first appearance, optionally filtered."""
    seen: dict[PermId, None] = {}
    for _, axes in spec_leaves_with_paths(spec):
        for perm_id in axes:
            if perm_id is not None and (predicate is None or predicate(perm_id)):
                seen.setdefault(perm_id, None)
    return list(seen)


def symmetry_ids(spec: Spec) -> list[PermId]:
    """The ids of a spec whose permutations are true symmetries of the network."""
    return perm_ids(spec, is_symmetry)


def map_ids(spec: Spec, fn: Callable[[PermId], PermId | None]) -> Spec:
    """Returns the spec with every non-``None`` id replaced by ``fn(id)``."""
    return jax.tree_util.tree_map(
        lambda axes: tuple(None if a is None else fn(a) for a in axes), spec, is_leaf=is_axes
    )


def random_permutations(
    key: jax.Array,
    spec: Spec,
    tree: PyTree,
    ids: list[PermId] | None = None,
) -> dict[PermId, jax.Array]:
    """Draws one uniformly random permutation per permutation id.

    Args:
        key: PRNG key.
        spec: the permutation spec.
        tree: a tree matching the spec (used for the axis sizes only).
        ids: which ids to permute; default all of them. Ids left out stay unpermuted.

    Returns:
        ``{id: int32 array of shape (n,)}`` with a permutation of ``range(n)`` each.
    """
    validate(spec, tree, channel_axis=_has_channel_axis(spec, tree))
    sizes = perm_sizes(spec, tree)
    chosen = list(sizes) if ids is None else list(ids)
    unknown = [perm_id for perm_id in chosen if perm_id not in sizes]
    if unknown:
        raise SpecError(f"permutation ids {unknown!r} do not occur in the spec")
    keys = jax.random.split(key, max(len(chosen), 1))
    return {
        perm_id: jax.random.permutation(k, sizes[perm_id])
        for k, perm_id in zip(keys, chosen, strict=False)
    }


def _has_channel_axis(spec: Spec, tree: PyTree) -> bool:
    leaves = spec_leaves_with_paths(spec)
    tensors = tree_leaves_with_paths(tree)
    if not leaves or len(leaves) != len(tensors):
        return False
    return all(
        np.ndim(tensor) == len(axes) + 1
        for (_, axes), (_, tensor) in zip(leaves, tensors, strict=True)
    )


def permute(tree: PyTree, spec: Spec, perms: Mapping[PermId, jax.Array]) -> PyTree:
    """Applies a group element to a weight-space tree.

    Every axis whose id has an entry in ``perms`` is re-indexed: output index ``j`` takes
    input index ``perms[id][j]``. A trailing channel axis (one more axis than the spec
    describes) is left alone.

    Args:
        tree: params or features pytree matching ``spec``.
        spec: the permutation spec.
        perms: ``{id: permutation}``, e.g. from :func:`random_permutations`.

    Returns:
        The permuted tree, same structure and shapes.
    """

    def permute_leaf(axes: Axes, tensor: jax.Array) -> jax.Array:
        if tensor.ndim not in (len(axes), len(axes) + 1):
            raise SpecError(f"tensor of shape {tensor.shape} does not match spec {axes!r}")
        for position, perm_id in enumerate(axes):
            if perm_id is not None and perm_id in perms:
                tensor = jnp.take(tensor, perms[perm_id], axis=position)
        return tensor

    return jax.tree_util.tree_map(permute_leaf, spec, tree, is_leaf=is_axes)


def inverse_permutations(perms: Mapping[PermId, jax.Array]) -> dict[PermId, jax.Array]:
    """The inverse group element: ``permute(permute(t, s, p), s, inverse(p)) == t``."""
    return {perm_id: jnp.argsort(p) for perm_id, p in perms.items()}


def with_channel_axis(tree: PyTree) -> PyTree:
    """Adds a trailing channel axis of size one to every tensor."""
    return jax.tree_util.tree_map(lambda t: t[..., None], tree)
