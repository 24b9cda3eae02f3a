"""Permutation specs as JSON, exactly: every id with its kind and name.

A spec written by :func:`spec_to_json` reads back as the same spec (:func:`spec_from_json`):
``{tensor path: [encoded id per axis]}``, the path the tree's keys joined by ``/``, and each
id one of ``null`` (a fixed axis), ``{"id": name}`` (a hidden-neuron symmetry),
``{"by_choice": name}`` (:class:`~lopt.nf.spec.ByChoice`) or ``{"spatial": name}``
(:class:`~lopt.nf.spec.Spatial`). Zoo manifests store their spec so.

Where only the structure matters (which ids join which axes, not their names), a weight space
is described by :func:`lopt.nf.matching.describe_weight_space` instead, as saved optimizers
store it.

>>> document = spec_to_json({"Dense_0": {"kernel": (ByChoice("in"), "h"), "bias": ("h",)}})
>>> document
{'Dense_0/bias': [{'id': 'h'}], 'Dense_0/kernel': [{'by_choice': 'in'}, {'id': 'h'}]}
>>> spec_from_json(document)["Dense_0"]["kernel"]
(ByChoice('in'), 'h')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from lopt.nf import spec as nfspec

SEPARATOR = "/"
"""Joins a tensor's tree keys into its path."""

_CLASSES = (("spatial", nfspec.Spatial), ("by_choice", nfspec.ByChoice))
_DECODERS = {"id": lambda name: name, "by_choice": nfspec.ByChoice, "spatial": nfspec.Spatial}


def id_to_json(perm_id: Any) -> Any:
    """One axis id as JSON (see the module docstring).

    Raises:
        ValueError: an id (or an id's name) that is not a string.
    """
    if perm_id is None:
        return None
    for kind, cls in _CLASSES:
        if isinstance(perm_id, cls):
            if not isinstance(perm_id.name, str):
                raise ValueError(f"only string id names can be stored, got {perm_id!r}")
            return {kind: perm_id.name}
    if not isinstance(perm_id, str):
        raise ValueError(f"only string permutation ids can be stored, got {perm_id!r}")
    return {"id": perm_id}


def id_from_json(entry: Any) -> Any:
    """Inverse of :func:`id_to_json`.

    Raises:
        ValueError: an entry that is not ``null`` or a one-key mapping of a known kind.
    """
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or len(entry) != 1:
        raise ValueError(f"bad permutation id entry {entry!r}")
    ((kind, name),) = entry.items()
    if kind not in _DECODERS:
        raise ValueError(f"unknown permutation id kind {kind!r} (known: {sorted(_DECODERS)})")
    return _DECODERS[kind](name)


def tensor_paths(spec: nfspec.Spec) -> dict[str, tuple]:
    """``{tensor path: axes}`` of a nested spec, in leaf order."""
    leaves = jax.tree_util.tree_flatten_with_path(spec, is_leaf=nfspec.is_axes)[0]
    join = lambda path: SEPARATOR.join(str(getattr(part, "key", part)) for part in path)
    return {join(path): axes for path, axes in leaves}


def spec_to_json(spec: nfspec.Spec) -> dict[str, list]:
    """A nested spec as JSON: ``{tensor path: [encoded id per axis]}``."""
    return {path: [id_to_json(a) for a in axes] for path, axes in tensor_paths(spec).items()}


def spec_from_json(document: Mapping[str, list]) -> dict[str, Any]:
    """Inverse of :func:`spec_to_json`: the nested spec (dicts of axes tuples)."""
    nested: dict[str, Any] = {}
    for path, entries in document.items():
        *parents, name = path.split(SEPARATOR)
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = tuple(id_from_json(entry) for entry in entries)
    return nested
