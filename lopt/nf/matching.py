"""Matching a model's weight space to another by structure, not by names or tree order.

A weight space's *structure* is which ids join which axes of which tensors, and the kind of
each id: a hidden-neuron symmetry, a :class:`~lopt.nf.spec.ByChoice` id, a
:class:`~lopt.nf.spec.Spatial` id, or ``None`` (a fixed axis). Names carry no structure:
flax names submodules in the order they are constructed, so the same MLP written as
``nn.Dense(10)(nn.relu(nn.Dense(32)(x)))`` calls its output layer ``Dense_0``. A neural
functional's parameters depend only on the structure (their names follow the order of the
tensors, and ids only by equality), so an optimizer meta-trained on one weight space serves
any other with the same structure once the tensors are put in correspondence.

>>> space = describe_weight_space(trained_spec)     # JSON: stored with a saved optimizer
>>> order = match_tensors(space, model_spec)        # model leaf order[k] is trained tensor k
>>> spec = canonical_spec(space)                    # the trained structure, as a list

**Which matching.** Where several exist (a true automorphism of the structure: e.g. two
identical parallel branches), the first in a depth-first search that takes, for the trained
tensors in their order, the model's candidate tensors in the model's leaf order: so the
model's first fitting tensor goes to the trained space's first tensor of that form. Axes
are matched in their stored order (a transposed kernel is another structure).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from lopt.nf import spec as nfspec

WEIGHT_SPACE_VERSION = 1

KINDS = ("hidden", "by_choice", "spatial", "fixed")
_KIND_WORDS = {"hidden": "hidden", "by_choice": "by-choice", "spatial": "spatial", "fixed": "fixed"}


class WeightSpaceMismatch(ValueError):
    """Two weight spaces have no structure-preserving correspondence; the message says
    which tensors fail to correspond and why."""


def kind_of(perm_id: Any) -> str:
    """The kind of an axis id (see :data:`KINDS`)."""
    if perm_id is None:
        return "fixed"
    if isinstance(perm_id, nfspec.Spatial):
        return "spatial"
    if isinstance(perm_id, nfspec.ByChoice):
        return "by_choice"
    return "hidden"


def describe_weight_space(spec: nfspec.Spec) -> dict:
    """The structure of ``spec`` as JSON: per tensor (in leaf order) its path and, per axis,
    ``[kind, id number]`` with ids numbered by first appearance (``None`` for fixed axes)."""
    nfspec.validate(spec)
    numbers: dict[Any, int] = {}
    tensors = []
    for path, axes in nfspec.spec_leaves_with_paths(spec):
        entries = []
        for perm_id in axes:
            if perm_id is None:
                entries.append(["fixed", None])
                continue
            number = numbers.setdefault(perm_id, len(numbers))
            entries.append([kind_of(perm_id), number])
        tensors.append({"path": path, "axes": entries})
    return {"version": WEIGHT_SPACE_VERSION, "tensors": tensors}


def canonical_spec(space: dict) -> list[tuple]:
    """The weight space of :func:`describe_weight_space` as a spec over a list of tensors,
    with canonical ids (``"h3"``, ``ByChoice("c0")``, ``Spatial("s1")``, ``None``)."""
    _check_space(space)
    make = {
        "hidden": lambda n: f"h{n}",
        "by_choice": lambda n: nfspec.ByChoice(f"c{n}"),
        "spatial": lambda n: nfspec.Spatial(f"s{n}"),
        "fixed": lambda n: None,
    }
    return [tuple(make[kind](number) for kind, number in t["axes"]) for t in space["tensors"]]


def _check_space(space: Any) -> None:
    if not isinstance(space, dict) or space.get("version") != WEIGHT_SPACE_VERSION:
        raise ValueError(f"not a weight-space description of version {WEIGHT_SPACE_VERSION}")
    for tensor in space.get("tensors", ()):
        for kind, _ in tensor["axes"]:
            if kind not in KINDS:
                raise ValueError(f"unknown axis kind {kind!r} in a weight-space description")


def _form(axes: Sequence[Sequence]) -> tuple[str, ...]:
    return tuple(kind for kind, _ in axes)


def _form_words(form: tuple[str, ...]) -> str:
    return "(" + ", ".join(_KIND_WORDS[kind] for kind in form) + ")"


def match_tensors(space: dict, spec: nfspec.Spec) -> tuple[int, ...]:
    """A structure-preserving correspondence from the tensors of ``space`` to the leaves of
    ``spec`` (see the module docstring for which one when several exist).

    Returns:
        ``order`` with ``order[k]`` the index (in ``spec``'s leaf order) of the tensor that
        plays the part of ``space``'s tensor ``k``.

    Raises:
        WeightSpaceMismatch: no correspondence exists; the message compares the tensors of
            each form (their axes' kinds) in both spaces, or says that they are connected
            differently.
    """
    _check_space(space)
    trained = [t["axes"] for t in space["tensors"]]
    model = describe_weight_space(spec)["tensors"]
    paths = [t["path"] for t in model]
    ours = [t["axes"] for t in model]
    trained_forms, model_forms = Counter(map(_form, trained)), Counter(map(_form, ours))
    if trained_forms != model_forms:
        lines = [
            f"the model has {model_forms[form]} tensor(s) with axes {_form_words(form)}; the "
            f"optimizer was trained on a weight space with {trained_forms[form]}"
            for form in sorted(set(trained_forms) | set(model_forms))
            if trained_forms[form] != model_forms[form]
        ]
        raise WeightSpaceMismatch(
            "the model's architecture differs from the one the optimizer was trained on: "
            + "; ".join(lines)
        )
    order = _search(trained, ours)
    if order is None:
        raise WeightSpaceMismatch(
            "the model's tensors have the same forms as those the optimizer was trained on "
            f"({len(ours)} tensors) but are connected differently: no correspondence keeps "
            "which axes share a permutation (e.g. a layer's output feeding another layer, a "
            f"bias along its kernel's outputs); model tensors: {paths}"
        )
    return order


def _search(trained: list, ours: list) -> tuple[int, ...] | None:
    """Depth-first search for a tensor correspondence with a consistent id bijection."""
    candidates = [
        [j for j, axes in enumerate(ours) if _form(axes) == _form(target)] for target in trained
    ]
    order: list[int] = []
    used: set[int] = set()

    def extend(k: int, forward: dict, backward: dict) -> bool:
        if k == len(trained):
            return True
        for j in candidates[k]:
            if j in used:
                continue
            fwd, bwd = dict(forward), dict(backward)
            consistent = True
            for (_, a), (_, b) in zip(trained[k], ours[j], strict=True):
                if a is None:
                    continue
                if fwd.setdefault(a, b) != b or bwd.setdefault(b, a) != a:
                    consistent = False
                    break
            if not consistent:
                continue
            used.add(j)
            order.append(j)
            if extend(k + 1, fwd, bwd):
                return True
            used.discard(j)
            order.pop()
        return False

    return tuple(order) if extend(0, {}, {}) else None
