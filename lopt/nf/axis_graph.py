"""A union-find over array axes whose classes carry tags.

:func:`~lopt.nf.derive.derive_spec` gives every axis of every value of a traced function
a node, ties the nodes of axes that index the same neurons, and tags nodes with what it
learns about them (:data:`ORDERED`, :data:`SPATIAL`, the by-choice names of model inputs
and outputs). A class's tags are the union of its nodes' tags.
"""

from __future__ import annotations

import itertools
from typing import Any

ORDERED = "ordered"
"""Tag of an axis whose order matters to the computation: it is never permuted."""

SPATIAL = "spatial"
"""Tag of a conv kernel's spatial axis."""


class AxisGraph:
    """Union-find over axes, with tags (ordered, spatial, by-choice names) per class.

    Each tag remembers when it was first given (a counter over all tags), so a class's
    by-choice names can be ordered by first occurrence.
    """

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}
        self.tags: dict[Any, dict[Any, int]] = {}
        self._counter = itertools.count()

    def find(self, node: Any) -> Any:
        """The root of ``node``'s class (``node`` joins the graph if new)."""
        self.parent.setdefault(node, node)
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: Any, b: Any) -> None:
        """Merges the classes of ``a`` and ``b``."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[root_b] = root_a

    def tag(self, node: Any, tag: Any) -> None:
        """Tags ``node`` (the first time only: a tag keeps its first position)."""
        self.tags.setdefault(node, {}).setdefault(tag, next(self._counter))

    def class_tags(self) -> dict[Any, dict[Any, int]]:
        """Per class root, its tags, each with its earliest position among the members."""
        merged: dict[Any, dict[Any, int]] = {}
        for node, tags in self.tags.items():
            bucket = merged.setdefault(self.find(node), {})
            for tag, order in tags.items():
                bucket[tag] = min(order, bucket.get(tag, order))
        return merged
