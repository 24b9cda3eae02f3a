"""Inputs of the hyperparameter-only baseline: a zoo's stored training hyperparameters.

The baseline never reads a weight: it says how much of a zoo's metric is predictable from
how each network was trained (its learning rate, batch size, ...) alone, the part of a
weight-space predictor's τ that needs no weights.

Each hyperparameter that is positive for every training network is taken in log space
(learning rates and batch sizes spread over orders of magnitude), then standardised with
the train split's mean and deviation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

_EPSILON = 1e-8


class HyperparameterScaler(NamedTuple):
    """How hyperparameters become the baseline's input vector.

    Attributes:
        names: the hyperparameters used, in input order (sorted).
        log: per name, whether it is taken in log space.
        mean: ``(H,)`` float32 mean of the (logged) values over the train split.
        std: ``(H,)`` float32 deviation (plus a small constant, so a constant column is 0).
    """

    names: tuple[str, ...]
    log: tuple[bool, ...]
    mean: np.ndarray
    std: np.ndarray


def _columns(hyperparameters: Mapping[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    missing = [name for name in names if name not in hyperparameters]
    if missing:
        raise ValueError(
            f"hyperparameters {missing} are missing; the predictor reads {list(names)}, "
            f"these have {sorted(hyperparameters)}"
        )
    return np.stack([np.asarray(hyperparameters[name], np.float64) for name in names], axis=-1)


def fit_hyperparameter_scaler(hyperparameters: Mapping[str, np.ndarray]) -> HyperparameterScaler:
    """Fits a :class:`HyperparameterScaler` to ``{name: (N,)}`` of the train networks.

    Raises:
        ValueError: no hyperparameters, or non-finite values.
    """
    names = tuple(sorted(hyperparameters))
    if not names:
        raise ValueError("the zoo stores no hyperparameters: the baseline has nothing to read")
    values = _columns(hyperparameters, names)
    if not np.all(np.isfinite(values)):
        raise ValueError("the zoo's hyperparameters hold non-finite values")
    log = tuple(bool(np.all(values[:, k] > 0)) for k in range(len(names)))
    logged = np.where(np.asarray(log), np.log(np.where(values > 0, values, 1.0)), values)
    mean = np.mean(logged, axis=0).astype(np.float32)
    std = (np.std(logged, axis=0) + _EPSILON).astype(np.float32)
    return HyperparameterScaler(names, log, mean, std)


def hyperparameter_features(
    hyperparameters: Mapping[str, np.ndarray], scaler: HyperparameterScaler
) -> np.ndarray:
    """The standardised input vectors, ``(N, H)`` float32 from ``{name: (N,)}``.

    Raises:
        ValueError: a hyperparameter the scaler reads is missing, or a logged one is not
            positive.
    """
    values = _columns(hyperparameters, scaler.names)
    log = np.asarray(scaler.log)
    if np.any(values[..., log] <= 0):
        raise ValueError(
            f"hyperparameters {[n for n, lg in zip(scaler.names, log, strict=True) if lg]} are "
            "read in log space and must be positive"
        )
    logged = np.where(log, np.log(np.where(values > 0, values, 1.0)), values).astype(np.float32)
    return (logged - scaler.mean) / scaler.std
