"""Weight-space inputs of the predictors: per-tensor standardised weights with a channel axis."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class Standardizer(NamedTuple):
    """Per-tensor mean and standard deviation over a zoo's training networks.

    One scalar per tensor (not per entry), so the map commutes with every permutation of
    the tensor's axes and the predictors stay invariant.
    """

    mean: PyTree
    std: PyTree


def fit_standardizer(params: PyTree) -> Standardizer:
    """Fits a :class:`Standardizer` to zoo params with leaves ``(N, *shape)``."""
    mean = jax.tree_util.tree_map(lambda w: np.float32(np.mean(w)), params)
    std = jax.tree_util.tree_map(lambda w: np.float32(np.std(w) + 1e-8), params)
    return Standardizer(mean, std)


def weight_features(params: PyTree, standardizer: Standardizer) -> PyTree:
    """Standardised weights, leaves ``(..., *shape, 1)`` (the trailing channel axis)."""
    return jax.tree_util.tree_map(
        lambda w, m, s: ((jnp.asarray(w) - m) / s)[..., None],
        params,
        standardizer.mean,
        standardizer.std,
    )


def finite_networks(params: PyTree) -> np.ndarray:
    """``(N,)`` mask of the networks whose every weight is finite (diverged runs are not)."""
    leaves = jax.tree_util.tree_leaves(params)
    masks = [np.all(np.isfinite(np.reshape(w, (w.shape[0], -1))), axis=1) for w in leaves]
    return np.logical_and.reduce(masks)
