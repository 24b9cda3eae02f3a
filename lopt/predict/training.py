"""Training a predictor on a zoo's train split, early-stopped on the validation split.

The target is standardised with the train split's mean and deviation and fitted by mean
squared error with Adam; after every epoch the validation Kendall τ is measured and the
best params so far are kept; training stops after ``patience`` epochs without improvement.
One epoch is one jitted ``lax.scan`` over shuffled minibatches.

:func:`run_prediction` does it all on a zoo: it drops the networks that cannot be read
(non-finite weights: diverged training; or a non-finite target) and counts them, splits,
fits, and scores the test split by Kendall τ, R² and mean absolute error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt.nf as nf
from lopt.predict.features import finite_networks, fit_standardizer
from lopt.predict.fitted import (
    FittedPredictor,
    TargetScale,
    batched_apply,
    build_module,
    model_inputs,
    predict,
)
from lopt.predict.hyperparameters import fit_hyperparameter_scaler
from lopt.predict.kendall import kendall_tau
from lopt.predict.models import WEIGHTLESS, canonical_kind
from lopt.predict.statistics import mean_absolute_error, r_squared

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """Predictor training settings; ``lopt-predict``'s ``fit`` entries
    (``configs/predict.yaml``) are these defaults.

    Attributes:
        learning_rate: Adam's learning rate.
        weight_decay: decoupled weight decay (AdamW).
        batch_size: networks per minibatch.
        max_epochs: most passes over the train split.
        patience: epochs without a better validation τ before stopping.
    """

    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 60
    patience: int = 10


class Split(NamedTuple):
    """Indices of a zoo's train, validation and test networks."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


class FitResult(NamedTuple):
    """A trained predictor.

    Attributes:
        params: the predictor's params at the best validation epoch.
        best_epoch: that epoch (0-based).
        validation_taus: validation τ after every epoch run.
    """

    params: PyTree
    best_epoch: int
    validation_taus: list[float]


def split_zoo(size: int, fractions: tuple[float, float, float], seed: int) -> Split:
    """A fixed random split of ``size`` networks by ``(train, validation, test)`` fractions."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three positive shares summing to 1: {fractions}")
    order = np.random.default_rng(seed).permutation(size)
    first = round(size * fractions[0])
    second = first + round(size * fractions[1])
    if first < 2 or second - first < 2 or size - second < 2:
        raise ValueError(f"a zoo of {size} networks is too small for the split {fractions}")
    return Split(order[:first], order[first:second], order[second:])


def make_batched_apply(module: nn.Module):
    """``apply(params, features)`` over a leading batch axis, returning ``(B,)``."""
    return batched_apply(module)


def fit_predictor(
    module: nn.Module,
    features: PyTree,
    targets: np.ndarray,
    split: Split,
    key: jax.Array,
    settings: FitSettings,
) -> FitResult:
    """Trains ``module`` to predict ``targets`` from ``features`` (leading axis: networks).

    Args:
        module: a predictor from :func:`lopt.predict.make_predictor`.
        features: feature tree, leaves ``(N, *shape, 1)``.
        targets: ``(N,)`` metric to predict.
        split: which networks train and which validate.
        key: PRNG key for the init and the minibatch order.
        settings: the training settings.

    Returns:
        The best params by validation τ.
    """
    if len(split.train) < settings.batch_size:
        raise ValueError(
            f"the train split ({len(split.train)}) is smaller than a batch ({settings.batch_size})"
        )
    take = lambda tree, idx: jax.tree_util.tree_map(lambda x: jnp.asarray(x[idx]), tree)
    train_x, val_x = take(features, split.train), take(features, split.validation)
    mean, std = float(np.mean(targets[split.train])), float(np.std(targets[split.train]) + 1e-8)
    train_y = jnp.asarray((targets[split.train] - mean) / std, jnp.float32)
    val_y = jnp.asarray(targets[split.validation], jnp.float32)

    init_key, order_key = jax.random.split(key)
    one = jax.tree_util.tree_map(lambda x: x[0], train_x)
    params = module.init(init_key, one)
    optimizer = optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay)
    batched = make_batched_apply(module)
    steps_per_epoch = len(split.train) // settings.batch_size

    # the data are arguments, not closed-over constants, which XLA would constant-fold
    @jax.jit
    def run_epoch(params, opt_state, epoch_key, train_x, train_y, val_x, val_y):
        order = jax.random.permutation(epoch_key, len(split.train))
        batches = order[: steps_per_epoch * settings.batch_size].reshape(steps_per_epoch, -1)

        def step(carry, batch):
            params, opt_state = carry
            loss_fn = lambda p: jnp.mean((batched(p, take(train_x, batch)) - train_y[batch]) ** 2)
            grads = jax.grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, kendall_tau(batched(params, val_x), val_y)

    opt_state = optimizer.init(params)
    best_params, best_tau, best_epoch, taus = params, -np.inf, 0, []
    for epoch in range(settings.max_epochs):
        epoch_key = jax.random.fold_in(order_key, epoch)
        params, opt_state, tau = run_epoch(
            params, opt_state, epoch_key, train_x, train_y, val_x, val_y
        )
        tau = float(tau)
        taus.append(tau)
        if np.isfinite(tau) and tau > best_tau:
            best_params, best_tau, best_epoch = params, tau, epoch
        elif epoch - best_epoch >= settings.patience:
            break
    return FitResult(best_params, best_epoch, taus)


class Dropped(NamedTuple):
    """Networks left out before the split, by cause.

    Attributes:
        non_finite_weights: networks with a NaN or infinite weight (diverged training).
        non_finite_target: networks with finite weights but a NaN or infinite metric.
    """

    non_finite_weights: int
    non_finite_target: int


class Evaluation(NamedTuple):
    """A predictor's held-out result.

    Attributes:
        tau: Kendall τ between predictions and true metrics on the test split.
        validation_tau: the best validation τ (the early-stopping criterion).
        predictions: ``(N_test,)`` predictions (in the metric's units).
        targets: ``(N_test,)`` true metrics.
        test_indices: ``(N_test,)`` the test networks' indices in the zoo as given
            (before the unreadable ones were dropped): the same for every predictor of
            one split seed, which pairs their predictions.
        r_squared: R² of the test predictions.
        mean_absolute_error: their mean absolute error, in the metric's units.
        best_epoch: the early-stopping epoch.
        epochs_run: epochs trained before stopping.
        kept: number of networks used.
        dropped: the networks left out, by cause.
        invariance_error: largest change of a test prediction under a random permutation
            of its network per the spec (float rounding only, for an invariant predictor);
            ``None`` for a predictor that reads no weights.
        predictor: the fitted predictor (to save, or to score other networks with).
    """

    tau: float
    validation_tau: float
    predictions: np.ndarray
    targets: np.ndarray
    test_indices: np.ndarray
    r_squared: float
    mean_absolute_error: float
    best_epoch: int
    epochs_run: int
    kept: int
    dropped: Dropped
    invariance_error: float | None
    predictor: FittedPredictor


def invariance_error(
    module: nn.Module, params: PyTree, spec: PyTree, features: PyTree, key: jax.Array
) -> float:
    """Largest change of ``module``'s predictions when each network is randomly permuted.

    Every network of ``features`` (leaves ``(B, *shape, C)``, laid out by ``spec``) gets its
    own random element of the predictor's group: the spec the module was built on where it
    has one (an ``"hnp"`` predictor's leaves by-choice axes alone), ``spec`` otherwise; for
    NFN without the spatial axes (:func:`lopt.nf.nfn_spec`: they are channels).
    """
    group = getattr(module, "spec", spec)
    group = nf.nfn_spec(group) if getattr(module, "kind", None) == "nfn" else group
    count = jax.tree_util.tree_leaves(features)[0].shape[0]

    def permute_one(key: jax.Array, x: PyTree) -> PyTree:
        return nf.permute(x, spec, nf.random_permutations(key, group, x))

    permuted = jax.vmap(permute_one)(jax.random.split(key, count), features)
    batched = jax.jit(make_batched_apply(module))
    return float(jnp.max(jnp.abs(batched(params, features) - batched(params, permuted))))


def readable_networks(params: PyTree, targets: np.ndarray) -> tuple[np.ndarray, Dropped]:
    """``(N,)`` mask of the networks with finite weights and a finite target, and the count
    of the others by cause."""
    finite_weights = finite_networks(params)
    finite_target = np.isfinite(np.asarray(targets))
    dropped = Dropped(
        non_finite_weights=int((~finite_weights).sum()),
        non_finite_target=int((finite_weights & ~finite_target).sum()),
    )
    return finite_weights & finite_target, dropped


def run_prediction(
    params: PyTree,
    spec: PyTree,
    targets: np.ndarray,
    kind: str,
    seed: int,
    *,
    hyperparameters: dict[str, np.ndarray] | None = None,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    model_options: dict[str, Any] | None = None,
    settings: FitSettings = FitSettings(),
) -> Evaluation:
    """Trains predictor ``kind`` on a zoo and measures it on the test split.

    Networks with non-finite weights or targets are dropped first (and counted). The split
    is fixed by ``split_seed``; ``seed`` changes the predictor's init and minibatch order.
    The test split is read once, after training, for τ, R², the mean absolute error and
    the invariance check.

    Args:
        params: zoo params, leaves ``(N, *shape)``.
        spec: the zoo's permutation spec.
        targets: ``(N,)`` metric to predict.
        kind: predictor name (:data:`lopt.predict.PREDICTORS`).
        seed: the predictor's seed.
        hyperparameters: the zoo's ``{name: (N,)}`` hyperparameters; needed by the
            predictors that read them (:data:`lopt.predict.WEIGHTLESS`).
        split_fractions: train, validation, test shares.
        split_seed: seed of the split.
        model_options: keyword arguments of :func:`make_predictor`.
        settings: training settings.

    Returns:
        The :class:`Evaluation` on the test split.
    """
    kind = canonical_kind(kind)
    if kind in WEIGHTLESS and not hyperparameters:
        raise ValueError(f"predictor {kind!r} reads the zoo's hyperparameters; none were given")
    options = dict(model_options or {})
    options["head"] = tuple(options.get("head", (64, 1)))
    keep, dropped = readable_networks(params, targets)
    indices = np.flatnonzero(keep)
    take = lambda tree, idx: jax.tree_util.tree_map(lambda w: np.asarray(w)[idx], tree)
    params, targets = take(params, indices), np.asarray(targets)[indices]
    split = split_zoo(len(targets), split_fractions, split_seed)
    mean, std = float(np.mean(targets[split.train])), float(np.std(targets[split.train]) + 1e-8)
    if kind in WEIGHTLESS:
        networks = take(hyperparameters, indices)
        scaler = fit_hyperparameter_scaler(take(networks, split.train))
        spec_used = None
    else:
        networks, spec_used = params, spec
        scaler = fit_standardizer(take(params, split.train))
    module = build_module(kind, spec_used, options)
    untrained = FittedPredictor(kind, options, spec_used, None, scaler, TargetScale(mean, std))
    features = model_inputs(untrained, networks)
    fit = fit_predictor(module, features, targets, split, jax.random.key(seed), settings)
    fitted = untrained._replace(params=fit.params)
    predictions = predict(fitted, take(networks, split.test))
    test_y = targets[split.test]
    tau = float(kendall_tau(jnp.asarray(predictions), jnp.asarray(test_y)))
    error = None
    if kind not in WEIGHTLESS:
        test_x = take(features, split.test)
        key = jax.random.key(seed + 1)
        error = invariance_error(module, fit.params, spec, test_x, key) * std
    return Evaluation(
        tau=tau,
        validation_tau=float(fit.validation_taus[fit.best_epoch]),
        predictions=predictions,
        targets=test_y,
        test_indices=indices[split.test],
        r_squared=r_squared(predictions, test_y),
        mean_absolute_error=mean_absolute_error(predictions, test_y),
        best_epoch=fit.best_epoch,
        epochs_run=len(fit.validation_taus),
        kept=len(indices),
        dropped=dropped,
        invariance_error=error,
        predictor=fitted,
    )
