"""A fitted predictor: everything that turns a network into a predicted metric.

:func:`predict` is the one path from inputs to predictions: the held-out evaluation
(:func:`lopt.predict.run_prediction`) and a saved predictor's ``score``
(:mod:`lopt.predict.saved`) both go through it, so a saved predictor scores exactly as the
evaluated one did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from lopt.predict.features import Standardizer, weight_features
from lopt.predict.hyperparameters import HyperparameterScaler, hyperparameter_features
from lopt.predict.models import WEIGHTLESS, make_predictor

PyTree = Any


class TargetScale(NamedTuple):
    """The train split's target mean and deviation: predictions are ``score * std + mean``."""

    mean: float
    std: float


class FittedPredictor(NamedTuple):
    """A trained predictor with its input and output scaling.

    Attributes:
        kind: the predictor (:data:`lopt.predict.PREDICTORS`).
        options: the keywords of :func:`lopt.predict.make_predictor` (``head`` a tuple).
        spec: the permutation spec of the weight space it reads (``None`` for a
            hyperparameter predictor).
        params: the module's variables.
        inputs: a per-tensor :class:`~lopt.predict.features.Standardizer` of the weights,
            or a :class:`~lopt.predict.hyperparameters.HyperparameterScaler`.
        target: the :class:`TargetScale`.
    """

    kind: str
    options: dict[str, Any]
    spec: PyTree
    params: PyTree
    inputs: Standardizer | HyperparameterScaler
    target: TargetScale

    @property
    def reads_weights(self) -> bool:
        """Whether the predictor reads weights (else the hyperparameters)."""
        return self.kind not in WEIGHTLESS


def build_module(kind: str, spec: PyTree, options: Mapping[str, Any]) -> nn.Module:
    """The flax module of a predictor (:func:`lopt.predict.make_predictor`)."""
    return make_predictor(kind, spec, **options)


def batched_apply(module: nn.Module):
    """``apply(params, inputs)`` over a leading batch axis of the inputs, returning ``(B,)``."""
    return jax.vmap(lambda params, x: module.apply(params, x)[0], in_axes=(None, 0))


def model_inputs(fitted: FittedPredictor, networks: PyTree) -> PyTree:
    """What the module reads for a batch of networks.

    Args:
        fitted: the predictor.
        networks: weights, leaves ``(B, *shape)``; or, for a hyperparameter predictor,
            ``{name: (B,)}`` hyperparameters.

    Returns:
        Standardised weights with a channel axis, leaves ``(B, *shape, 1)``; or ``(B, H)``.
    """
    if fitted.reads_weights:
        return weight_features(networks, fitted.inputs)
    return hyperparameter_features(networks, fitted.inputs)


def predict(fitted: FittedPredictor, networks: PyTree) -> np.ndarray:
    """Predicted metric of a batch of networks, in the metric's units.

    Args:
        fitted: the predictor.
        networks: see :func:`model_inputs`.

    Returns:
        ``(B,)`` float64 predictions.
    """
    module = build_module(fitted.kind, fitted.spec, fitted.options)
    scores = jax.jit(batched_apply(module))(fitted.params, model_inputs(fitted, networks))
    return np.asarray(scores) * fitted.target.std + fitted.target.mean
