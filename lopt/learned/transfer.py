"""A learned optimizer for any model whose weight space has the structure it was trained on.

A saved learned rule (format 4 on) records the structure of the weight space it was
meta-trained on (:func:`lopt.nf.matching.describe_weight_space`). For a model with another
construction order, other module names or other widths, :func:`for_model` finds the
model's tensors that play the part of each trained tensor
(:func:`lopt.nf.matching.match_tensors`), rebuilds the rule on the trained structure, and
returns it behind the model's own pytree: params, gradients and updates keep the model's
layout, and the rule sees them in the trained order with the trained ids, so its update is
the one it would compute on the trained model (the same tensors, mapped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from lopt.learned.base import LearnedOptimizer
from lopt.learned.optimizers import optimizer_from_config
from lopt.nf import matching
from lopt.nf import spec as nfspec

PyTree = Any


def with_leaf_order(
    opt: LearnedOptimizer, order: Sequence[int], model_spec: nfspec.Spec | None = None
) -> LearnedOptimizer:
    """``opt`` (built on a list of tensors) taking and returning the model's pytrees.

    Args:
        opt: a learned optimizer whose spec is a list: tensor ``k`` of it is leaf
            ``order[k]`` of the model's params.
        order: see above; a permutation of the model's leaf indices.
        model_spec: the model's own spec; ``init`` checks params against it first, so a
            mismatch is reported in the model's terms (its tensor paths).
    """
    order = tuple(order)
    inverse = {leaf: k for k, leaf in enumerate(order)}

    def to_trained(tree: PyTree) -> list:
        leaves = jax.tree_util.tree_leaves(tree)
        if len(leaves) != len(order):
            raise ValueError(
                f"the model has {len(leaves)} parameter tensors; this optimizer was matched "
                f"to a model with {len(order)}"
            )
        return [leaves[leaf] for leaf in order]

    def to_model(trained: list, like: PyTree) -> PyTree:
        leaves = [trained[inverse[i]] for i in range(len(order))]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)

    def check(params: PyTree) -> None:
        if model_spec is not None:
            nfspec.validate(model_spec, params)

    def init_meta(key: jax.Array, params: PyTree | None = None) -> PyTree:
        if params is None:
            return opt.init_meta(key)
        check(params)
        return opt.init_meta(key, to_trained(params))

    def init(params: PyTree, **run: Any) -> Any:
        check(params)
        return opt.init(to_trained(params), **run)

    def update(theta, grads, state, params=None, loss=None):
        trained_params = None if params is None else to_trained(params)
        updates, state = opt.update(theta, to_trained(grads), state, trained_params, loss=loss)
        return to_model(updates, grads), state

    return LearnedOptimizer(init_meta, init, update, opt.config, opt.spec, opt.needs_num_steps)


def for_model(config: dict, space: dict, spec: nfspec.Spec, **extra: Any) -> LearnedOptimizer:
    """The learned rule of ``config``, trained on weight space ``space``, for a model with
    permutation spec ``spec``.

    Args:
        config: the rule's config (``{"name": ..., **hyperparameters}``).
        space: the trained weight space (:func:`lopt.nf.matching.describe_weight_space`).
        spec: the model's permutation spec.
        **extra: further factory keywords; ``example_params`` (the model's params or
            their shapes) is reordered to the trained layout.

    Raises:
        lopt.nf.matching.WeightSpaceMismatch: the model's weight space has another
            structure (the message says which tensors fail to correspond).
    """
    order = matching.match_tensors(space, spec)
    if extra.get("example_params") is not None:
        leaves = jax.tree_util.tree_leaves(extra["example_params"])
        extra["example_params"] = [leaves[leaf] for leaf in order]
    opt = optimizer_from_config(config, matching.canonical_spec(space), **extra)
    return with_leaf_order(opt, order, spec)
