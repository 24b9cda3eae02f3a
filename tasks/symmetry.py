"""Numerical check of a permutation spec: do its symmetries leave the function unchanged?"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.nf import spec as nfspec

from .base import Task

PyTree = Any


class SymmetryError(nfspec.SpecError):
    """A spec declares a symmetry that changes the network's function."""


class SymmetryReport(NamedTuple):
    """Result of :func:`check_symmetry`.

    Attributes:
        errors: ``{id: max |f(permuted params) - f(params)|}`` for every checked id permuted
            alone, plus the key ``"<all>"`` for all of them permuted at once.
        tolerance: the largest change accepted as float round-off.
    """

    errors: dict[Any, float]
    tolerance: float

    @property
    def failed(self) -> list[Any]:
        """Ids whose permutation changed the function beyond the tolerance."""
        return [perm_id for perm_id, error in self.errors.items() if error > self.tolerance]

    @property
    def ok(self) -> bool:
        return not self.failed


def _non_identity(key: jax.Array, size: int) -> jax.Array:
    """A uniformly random permutation, replaced by a cyclic shift if it is the identity."""
    perm = jax.random.permutation(key, size)
    identity = jnp.arange(size)
    return jnp.where(jnp.all(perm == identity), jnp.roll(identity, 1), perm)


def check_symmetry(
    fn: Task | Callable[..., PyTree],
    params: PyTree,
    spec: nfspec.Spec | None,
    key: jax.Array,
    *,
    inputs: PyTree | None = None,
    ids: Sequence[Any] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    raise_on_failure: bool = True,
) -> SymmetryReport:
    """Checks that permuting the spec's symmetry ids leaves a function unchanged.

    Every checked id is permuted alone by a random (non-identity) permutation, then all of
    them together; each time the outputs are compared with the unpermuted ones. Use it on
    your own models: a hand-written or derived spec that claims a false symmetry fails.

    Args:
        fn: a :class:`Task` (its ``apply`` on a batch drawn from ``key``), or a function
            ``fn(params) -> outputs`` (``fn(params, inputs)`` when ``inputs`` is given).
        params: the parameter pytree.
        spec: the spec to check; ``None`` uses ``fn.spec`` of a task.
        key: PRNG key for the permutations (and the task's batch).
        inputs: optional second argument of ``fn``.
        ids: ids to check; default ``lopt.nf.spec.symmetry_ids(spec)`` (the true symmetries).
        rtol: tolerance relative to ``max |f(params)|``.
        atol: absolute tolerance.
        raise_on_failure: raise :class:`SymmetryError` naming the failing ids.

    Returns:
        A :class:`SymmetryReport`.
    """
    batch_key, perm_key = jax.random.split(key)
    if isinstance(fn, Task):
        task = fn
        spec = task.spec if spec is None else spec
        task_inputs = task.batch(batch_key)["inputs"] if inputs is None else inputs
        evaluate = lambda p: task.apply(p, task_inputs)
    elif callable(fn):
        evaluate = fn if inputs is None else (lambda p: fn(p, inputs))
    else:
        raise TypeError(f"check_symmetry needs a Task or a callable, got {type(fn).__name__}")
    if spec is None:
        raise ValueError("check_symmetry needs a spec (or a Task, whose spec is used)")
    nfspec.validate(spec, params)
    checked = nfspec.symmetry_ids(spec) if ids is None else list(ids)
    sizes = nfspec.perm_sizes(spec, params)
    unknown = [perm_id for perm_id in checked if perm_id not in sizes]
    if unknown:
        raise nfspec.SpecError(f"ids {unknown!r} do not occur in the spec")

    reference = jax.jit(evaluate)(params)
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(reference))
    keys = jax.random.split(perm_key, max(len(checked), 1))
    perms = {
        perm_id: _non_identity(k, sizes[perm_id])
        for k, perm_id in zip(keys, checked, strict=False)
        if sizes[perm_id] > 1
    }

    order = list(perms)

    @jax.jit
    def permuted_change(perm_list: list[jax.Array]) -> jax.Array:
        permuted = evaluate(nfspec.permute(params, spec, dict(zip(order, perm_list, strict=True))))
        diffs = jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), permuted, reference)
        return jnp.max(jnp.stack(jax.tree_util.tree_leaves(diffs)))

    def change(group: dict[Any, jax.Array]) -> float:
        # Unpermuted ids get the identity, so every call shares one compiled program.
        return float(
            permuted_change([group.get(perm_id, jnp.arange(sizes[perm_id])) for perm_id in order])
        )

    errors = {perm_id: change({perm_id: perm}) for perm_id, perm in perms.items()}
    if perms:
        errors["<all>"] = change(perms)
    report = SymmetryReport(errors=errors, tolerance=atol + rtol * scale)
    if raise_on_failure and not report.ok:
        details = ", ".join(
            f"{perm_id!r} (change {errors[perm_id]:.3g})" for perm_id in report.failed
        )
        raise SymmetryError(
            f"permuting these ids changes the function beyond tolerance "
            f"{report.tolerance:.3g}, so they are not symmetries: {details}"
        )
    return report
