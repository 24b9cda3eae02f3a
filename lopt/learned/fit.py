"""Whether meta-parameters fit a learned optimizer: the check every load and export makes.

A theta read from disk, or handed to :func:`lopt.learned.as_optax`, must have the structure
and shapes its optimizer makes for the params it will train; the comparison itself is
:func:`lopt.persistence.tree_mismatch`, so a mismatch is named as every other one is.

>>> mismatch = theta_mismatch(opt, theta, params)
>>> if mismatch is not None:
...     raise ValueError(f"theta does not fit: {mismatch}")
"""

from __future__ import annotations

from typing import Any

import jax

from lopt.learned.base import LearnedOptimizer
from lopt.persistence import TreeMismatch, tree_mismatch

PyTree = Any


def expected_theta(opt: LearnedOptimizer, params: PyTree | None) -> PyTree:
    """The shapes of the meta-parameters ``opt`` makes for ``params`` (``ShapeDtypeStruct``
    leaves; nothing is computed)."""
    return jax.eval_shape(lambda key: opt.init_meta(key, params), jax.random.key(0))


def theta_mismatch(
    opt: LearnedOptimizer, theta: PyTree, params: PyTree | None, *, ranks_only: bool = False
) -> TreeMismatch | None:
    """How ``theta`` differs from the meta-parameters ``opt`` needs for ``params``.

    Args:
        opt: the optimizer.
        theta: the meta-parameters to check.
        params: the params (arrays or ``jax.ShapeDtypeStruct``) ``theta`` is for.
        ranks_only: see :func:`lopt.persistence.tree_mismatch`.
    """
    return tree_mismatch(expected_theta(opt, params), theta, ranks_only=ranks_only)


def check_theta(opt: LearnedOptimizer, theta: PyTree, params: PyTree) -> None:
    """Checks that ``theta`` has the structure and shapes ``opt`` needs for ``params``.

    Raises:
        ValueError: naming the meta-parameters that are missing or unexpected, or the first
            one of the wrong shape.
    """
    mismatch = theta_mismatch(opt, theta, params)
    if mismatch is None:
        return
    hint = ""
    if mismatch.wrong and not mismatch.paths_differ:
        hint = " (was theta made for a model whose fixed, unpermuted axes have other lengths?)"
    name = opt.config.get("name", "?")
    raise ValueError(
        f"theta does not fit the {name!r} optimizer for these params: {mismatch}{hint}"
    )
