"""Predicting a trained network's test metric from its weights alone.

Invariant UNF and NFN networks (:class:`lopt.nf.InvariantNetwork`), Deep Sets and STATNN,
trained on a zoo (:mod:`lopt.zoo`) with early stopping and scored by Kendall τ.

>>> zoo = lopt.zoo.load_zoo("zoos/rnn")
>>> result = run_prediction(zoo.params, zoo.spec, zoo.metrics["test_accuracy"], "unf", seed=0)
>>> result.tau
"""

from lopt.predict.features import (
    Standardizer,
    finite_networks,
    fit_standardizer,
    weight_features,
)
from lopt.predict.kendall import kendall_tau
from lopt.predict.models import (
    PREDICTORS,
    QUANTILES,
    SYMMETRIES,
    StatNN,
    make_predictor,
    symmetry_spec,
    tensor_statistics,
)
from lopt.predict.training import (
    Evaluation,
    FitResult,
    FitSettings,
    Split,
    fit_predictor,
    invariance_error,
    make_batched_apply,
    run_prediction,
    split_zoo,
)

__all__ = [
    "PREDICTORS",
    "QUANTILES",
    "SYMMETRIES",
    "Evaluation",
    "FitResult",
    "FitSettings",
    "Split",
    "Standardizer",
    "StatNN",
    "finite_networks",
    "fit_predictor",
    "fit_standardizer",
    "invariance_error",
    "kendall_tau",
    "make_batched_apply",
    "make_predictor",
    "run_prediction",
    "split_zoo",
    "symmetry_spec",
    "tensor_statistics",
    "weight_features",
]
