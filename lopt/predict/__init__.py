"""Predicting a trained network's test metric from its weights alone.

Invariant UNF and NFN networks (:class:`lopt.nf.InvariantNetwork`), two Deep Sets (per
tensor, and one set over all tensors), STATNN, and a baseline that reads the zoo's
hyperparameters instead of the weights; trained on a zoo (:mod:`lopt.zoo`) with early
stopping and scored by Kendall τ, R² and mean absolute error. Differences between
predictors get paired bootstrap intervals (:mod:`lopt.predict.statistics`); a fitted
predictor is saved, loaded and applied to other networks (:mod:`lopt.predict.saved`).

>>> zoo = lopt.zoo.load_zoo("zoos/rnn")
>>> result = run_prediction(zoo.params, zoo.spec, zoo.metrics["test_accuracy"], "unf", seed=0)
>>> result.tau
>>> save_predictor("unf_rnn", result.predictor, target_name="test_accuracy",
...                example=jax.tree.map(lambda w: w[0], zoo.params))
>>> load_predictor("unf_rnn").score(my_params)
"""

from lopt.predict.features import (
    Standardizer,
    finite_networks,
    fit_standardizer,
    weight_features,
)
from lopt.predict.fitted import FittedPredictor, TargetScale, predict
from lopt.predict.hyperparameters import (
    HyperparameterScaler,
    fit_hyperparameter_scaler,
    hyperparameter_features,
)
from lopt.predict.kendall import kendall_tau
from lopt.predict.models import (
    ALIASES,
    PREDICTORS,
    QUANTILES,
    SYMMETRIES,
    WEIGHTLESS,
    HyperparameterMLP,
    SingleSetDeepSets,
    StatNN,
    canonical_kind,
    make_predictor,
    symmetry_spec,
    tensor_statistics,
)
from lopt.predict.network_files import read_network_file
from lopt.predict.saved import (
    SavedPredictor,
    SavedPredictorError,
    WeightSpaceError,
    load_predictor,
    save_predictor,
)
from lopt.predict.statistics import (
    Interval,
    mean_absolute_error,
    paired_bootstrap,
    r_squared,
    weighted_kendall_tau,
    weighted_mean_absolute_error,
)
from lopt.predict.training import (
    Dropped,
    Evaluation,
    FitResult,
    FitSettings,
    Split,
    fit_predictor,
    invariance_error,
    make_batched_apply,
    readable_networks,
    run_prediction,
    split_zoo,
)

__all__ = [
    "ALIASES",
    "PREDICTORS",
    "QUANTILES",
    "SYMMETRIES",
    "WEIGHTLESS",
    "Dropped",
    "Evaluation",
    "FitResult",
    "FitSettings",
    "FittedPredictor",
    "HyperparameterMLP",
    "HyperparameterScaler",
    "Interval",
    "SavedPredictor",
    "SavedPredictorError",
    "SingleSetDeepSets",
    "Split",
    "Standardizer",
    "StatNN",
    "TargetScale",
    "WeightSpaceError",
    "canonical_kind",
    "finite_networks",
    "fit_hyperparameter_scaler",
    "fit_predictor",
    "fit_standardizer",
    "hyperparameter_features",
    "invariance_error",
    "kendall_tau",
    "load_predictor",
    "make_batched_apply",
    "make_predictor",
    "mean_absolute_error",
    "paired_bootstrap",
    "predict",
    "r_squared",
    "read_network_file",
    "readable_networks",
    "run_prediction",
    "save_predictor",
    "split_zoo",
    "symmetry_spec",
    "tensor_statistics",
    "weight_features",
    "weighted_kendall_tau",
    "weighted_mean_absolute_error",
]
