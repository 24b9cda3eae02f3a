"""Exposes a learned optimizer with fixed meta-parameters as an optax transformation.

>>> optimizer = as_optax(make_optimizer("unf", spec), theta)
>>> opt_state = optimizer.init(params)
>>> updates, opt_state = optimizer.update(grads, opt_state, params, value=loss)
>>> params = optax.apply_updates(params, updates)

The transformation is an ``optax.GradientTransformationExtraArgs``: it works under
``jax.jit`` and inside ``optax.chain`` (e.g. after ``optax.clip_by_global_norm``), takes
the loss through optax's ``value=`` keyword (passed to the update rule as ``loss``) and
ignores other extra arguments.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lopt.learned.base import LearnedOptimizer
from lopt.learned.fit import check_theta

PyTree = Any


def as_optax(
    opt: LearnedOptimizer, theta: PyTree, num_steps: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``opt`` with meta-parameters ``theta`` as an optax transformation.

    Args:
        opt: a learned optimizer (built for the spec of the params it will see).
        theta: its meta-parameters.
        num_steps: the length of the run it will take, in updates, as a schedule is given
            one. Required by a rule that follows the run's progress
            (``opt.needs_num_steps``); ignored by the others.

    Returns:
        ``optax.GradientTransformationExtraArgs`` whose ``init(params)`` validates the
        params against the spec and ``theta`` against the optimizer, and whose
        ``update(grads, state, params, value=None)`` requires ``params``.

    Raises:
        ValueError: the rule needs ``num_steps`` and it is missing or not a positive integer.
    """
    theta = jax.tree_util.tree_map(jnp.asarray, theta)
    name = opt.config.get("name", "learned")
    if opt.needs_num_steps and not (
        isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps > 0
    ):
        raise ValueError(
            f"the {name!r} optimizer follows the run's progress, so it needs the run's "
            f"length: pass num_steps=<updates the run will take> (a positive int), got "
            f"{num_steps!r}"
        )
    run = {"num_steps": num_steps} if opt.needs_num_steps else {}

    def init_fn(params: PyTree) -> Any:
        check_theta(opt, theta, params)
        return opt.init(params, **run)

    def update_fn(
        updates: PyTree,
        state: Any,
        params: PyTree | None = None,
        *,
        value: jax.Array | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, Any]:
        del extra_args
        if params is None:
            raise ValueError(
                f"the {name!r} learned optimizer needs the current params: call "
                "optimizer.update(grads, opt_state, params) (its update depends on the weights)"
            )
        return opt.update(theta, updates, state, params, loss=value)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
