"""Helpers shared by the tests of neural functionals and the predictors built on them."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def random_variables(module: nn.Module, seed: int, *inputs) -> dict:
    """Variables of ``module`` for ``inputs``, drawn with numpy at flax's shapes.

    The properties the tests check (equivariance, invariance, agreement with a reference)
    hold for any parameters. Compiling ``module.init`` for a weight space costs several
    times compiling ``apply``, so only its shapes are traced. Scales keep activations of
    order one: a matrix ``1/sqrt(its larger side)``, a vector 0.1.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)
    scale = lambda shape: 1 / math.sqrt(max(shape)) if len(shape) > 1 else 0.1
    draw = lambda s: jnp.asarray(rng.normal(0, scale(s.shape), s.shape), s.dtype)
    return jax.tree_util.tree_map(draw, shapes)
