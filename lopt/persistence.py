"""Writing files so that a crash never leaves half of one, and checking that what is read back
fits what it is for.

The files a reader must never see half-written (a saved optimizer's ``config.json`` and
``theta.msgpack``, a checkpoint's file list, a run's config and summary) go through
:func:`write_atomic`: the bytes go to a temporary file in the same directory, which then
replaces the target in one rename, so a reader sees the old file or the new one, never a
mix.

Files that must come back exactly as written (a saved optimizer's ``theta.msgpack``, zoo
shards) are recorded with their :func:`sha256`, which the reader compares.

Every check that one pytree fits another (meta-parameters against an optimizer, gradients
against params, a checkpoint against the run restoring it) goes through
:func:`leaf_mismatch` (:func:`tree_mismatch` for two trees), so the offending entries are
found and named the same way everywhere:

>>> mismatch = tree_mismatch(expected, actual)
>>> if mismatch is not None:
...     raise ValueError(f"the tree does not fit: {mismatch}")

This module handles bytes and trees only; what a learned optimizer's theta must look like is
:mod:`lopt.learned.fit`'s.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

PyTree = Any

# -- atomic writes ------------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = 0o644) -> Path:
    """Writes ``data`` to ``path`` atomically (a temporary file, then a rename).

    Args:
        path: the file to write; its directory must exist.
        data: the whole content.
        mode: permission bits of the written file; ``None`` keeps those of the temporary
            file (owner read and write only).

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    # The temporary name starts with ".<name>." so that listings of the directory can
    # recognise (and skip) an unfinished write.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically, readable by everyone (0644)."""
    return write_atomic(path, text.encode())


def write_json(path: str | os.PathLike, document: Any) -> Path:
    """Writes ``document`` as indented JSON with sorted keys, atomically (see
    :func:`write_text`); NaN and infinities are refused."""
    return write_text(path, json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n")


def sha256(source: bytes | str | os.PathLike) -> str:
    """Hex SHA-256 of ``source``: bytes, or the path of a file whose bytes are hashed."""
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
        return digest.hexdigest()
    with open(source, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def nest(flat: Mapping[str, Any], separator: str = "/") -> dict[str, Any]:
    """Nested dicts from a flat ``{"a/b/c": leaf}`` mapping (keys split at ``separator``)."""
    tree: dict[str, Any] = {}
    for name, leaf in flat.items():
        *parents, last = name.split(separator)
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs, as ``key: old -> new``."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{where}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{where}: {old[key]!r} -> (absent)")
            else:
                out.extend(config_differences(old[key], new[key], where))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


# -- does one pytree fit another ----------------------------------------------------------


class TreeMismatch(NamedTuple):
    """How a tree's leaves differ from those expected, by leaf path
    (``jax.tree_util.keystr``).

    Attributes:
        missing: expected paths the tree lacks, in the expected order.
        unexpected: paths of the tree that are not expected, in the tree's order.
        wrong: ``(path, found, expected)`` descriptions (shapes, for :func:`tree_mismatch`)
            of each common leaf that differs, in the expected order.
        reordered: whether the leaves come in another order than expected (only when the
            order was asked to matter).
        ranks_only: whether only ranks were compared.
    """

    missing: list[str]
    unexpected: list[str]
    wrong: list[tuple[str, Any, Any]]
    reordered: bool = False
    ranks_only: bool = False

    @property
    def paths_differ(self) -> bool:
        """Whether the paths themselves (not only the leaves at them) differ."""
        return bool(self.missing or self.unexpected or self.reordered)

    def __str__(self) -> str:
        if self.paths_differ or not self.wrong:
            missing, unexpected = sorted(self.missing), sorted(self.unexpected)
            return f"missing {missing or 'none'}, unexpected {unexpected or 'none'}"
        if self.ranks_only:
            return f"wrong rank for {[path for path, _, _ in self.wrong]}"
        path, found, expected = self.wrong[0]
        return f"{path} has shape {found}, expected {expected}"


def leaf_mismatch(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    differs: Callable[[Any, Any], bool] = operator.ne,
    ordered: bool = False,
) -> TreeMismatch | None:
    """How the leaves ``actual`` describes differ from those ``expected`` describes.

    Args:
        expected: ``{path: description}`` of the reference leaves, in their order.
        actual: the same of the leaves to check.
        differs: whether a found description (first argument) differs from the expected
            one.
        ordered: the leaves must also come in the same order, not only have the same paths.

    Returns:
        ``None`` when ``actual`` fits, else a :class:`TreeMismatch` with every difference.
    """
    missing = [path for path in expected if path not in actual]
    unexpected = [path for path in actual if path not in expected]
    wrong = [
        (path, actual[path], want)
        for path, want in expected.items()
        if path in actual and differs(actual[path], want)
    ]
    reordered = ordered and not (missing or unexpected) and list(expected) != list(actual)
    if missing or unexpected or wrong or reordered:
        return TreeMismatch(missing, unexpected, wrong, reordered)
    return None


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


def tree_mismatch(
    expected: PyTree, actual: PyTree, *, ranks_only: bool = False, ordered: bool = False
) -> TreeMismatch | None:
    """How ``actual`` differs from ``expected`` in its leaves' paths and shapes.

    Args:
        expected: the reference tree (arrays or ``jax.ShapeDtypeStruct``).
        actual: the tree to check.
        ranks_only: compare only the leaves' ranks, for a reference whose lengths are
            placeholders.
        ordered: the leaves must also come in the same order (as ``jax.tree.map`` over
            both trees needs), not only have the same paths.

    Returns:
        ``None`` when ``actual`` fits, else a :class:`TreeMismatch` (its ``str`` says how).
    """
    differs = (lambda a, b: len(a) != len(b)) if ranks_only else operator.ne
    mismatch = leaf_mismatch(_shapes(expected), _shapes(actual), differs=differs, ordered=ordered)
    return None if mismatch is None else mismatch._replace(ranks_only=ranks_only)
