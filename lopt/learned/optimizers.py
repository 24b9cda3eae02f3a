"""Builds any optimizer of the package by name, or back from its saved config."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from lopt.learned import baselines
from lopt.learned.base import LearnedOptimizer
from lopt.learned.nf_optimizer import BACKBONES, make_nf_optimizer
from lopt.nf import spec as nfspec

PyTree = Any


OPTIMIZERS: dict[str, Callable[..., LearnedOptimizer]] = {
    **{backbone: functools.partial(make_nf_optimizer, backbone) for backbone in BACKBONES},
    "sgdm": baselines.make_sgdm,
    "adam": baselines.make_adam,
    "adam_cosine": baselines.make_adam_cosine,
}
"""Every optimizer name and its factory ``factory(spec, **hyper)``."""

LEARNED = BACKBONES
"""Names of the optimizers with a neural-functional update network."""


def hyperparameters(name: str) -> tuple[str, ...]:
    """The keyword hyperparameters ``make_optimizer(name, spec, ...)`` accepts."""
    factory = _factory(name)
    return tuple(
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    )


def _factory(name: str) -> Callable[..., LearnedOptimizer]:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def make_optimizer(name: str, spec: nfspec.Spec | None = None, **hyper: Any) -> LearnedOptimizer:
    """Builds an optimizer by name.

    Args:
        name: one of ``unf``, ``unf_deep``, ``nfn``, ``deepsets`` (learned update rule,
            :func:`lopt.learned.nf_optimizer.make_nf_optimizer`), ``sgdm``, ``adam``
            (:mod:`lopt.learned.baselines`).
        spec: permutation spec of the optimised params; required by the learned rules,
            optional for the baselines.
        **hyper: hyperparameters of that optimizer (see :func:`hyperparameters`).

    Raises:
        ValueError: on an unknown name or hyperparameter, or an invalid value.
    """
    factory = _factory(name)
    accepted = hyperparameters(name)
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown hyperparameters {unknown} for optimizer {name!r}; accepted: {list(accepted)}"
        )
    return factory(spec, **hyper)


def optimizer_from_config(
    config: Mapping[str, Any], spec: nfspec.Spec | None, **extra: Any
) -> LearnedOptimizer:
    """Rebuilds an optimizer from its ``config`` (``{"name": ..., **hyper}``) for ``spec``.

    ``extra`` adds keywords that are not part of a config, e.g. ``example_params``.
    """
    if "name" not in config:
        raise ValueError(f"optimizer config has no 'name': {dict(config)!r}")
    hyper = {key: value for key, value in config.items() if key != "name"}
    return make_optimizer(config["name"], spec, **hyper, **extra)
