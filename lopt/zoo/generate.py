"""Training a zoo: many small networks at once, vmapped, each with its own hyperparameters.

Every network ``i`` of a zoo draws its hyperparameters and its training randomness from
``fold_in(key(seed), i)`` alone, so a zoo is the same whether it is generated in one go, in
shards of any size, or resumed. Hyperparameters that change shapes are masked instead:

* batch size: every step draws ``max_batch_size`` examples and weights the first
  ``batch_size`` of them;
* number of steps: the scan runs ``max_steps`` steps; updates after a network's own
  ``num_steps`` are zero;
* data subset: a network samples only from the first ``subset_size`` entries of its own
  random permutation of the training split.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from lopt.zoo.problems import ZooProblem
from lopt.zoo.storage import ShardWriter

PyTree = Any


@dataclasses.dataclass(frozen=True)
class HyperparameterRanges:
    """Where each network's training hyperparameters are sampled from.

    Attributes:
        learning_rate: Adam learning rate, log-uniform in ``[low, high]``.
        batch_sizes: batch size, uniform over these values.
        init_scale: factor on every initial weight, log-uniform in ``[low, high]``.
        steps: number of training steps, uniform integer in ``[low, high]``.
        subset_fraction: share of the training split a network may see, uniform in
            ``[low, high]``.
    """

    learning_rate: tuple[float, float] = (1e-4, 3e-2)
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    init_scale: tuple[float, float] = (0.3, 3.0)
    steps: tuple[int, int] = (20, 400)
    subset_fraction: tuple[float, float] = (0.02, 1.0)

    def __post_init__(self) -> None:
        for name in ("learning_rate", "init_scale", "steps", "subset_fraction"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(
                    f"hyperparameter range {name} needs 0 < low <= high, got {low, high}"
                )
        if self.subset_fraction[1] > 1:
            raise ValueError(f"subset_fraction cannot exceed 1, got {self.subset_fraction}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes}")


@dataclasses.dataclass(frozen=True)
class ZooSettings:
    """How large a zoo is and how it is cut into shards.

    Attributes:
        count: number of networks in the finished zoo.
        shard_size: networks per shard (and per vmapped training call).
        ranges: the hyperparameter ranges.
    """

    count: int = 2000
    shard_size: int = 250
    ranges: HyperparameterRanges = HyperparameterRanges()

    def __post_init__(self) -> None:
        if self.count < 1 or self.shard_size < 1:
            raise ValueError(
                f"count and shard_size must be positive, got {self.count}, {self.shard_size}"
            )


class Hyperparameters(NamedTuple):
    """One network's sampled hyperparameters (scalars; arrays ``(N,)`` for a zoo)."""

    learning_rate: jax.Array
    batch_size: jax.Array
    init_scale: jax.Array
    num_steps: jax.Array
    subset_fraction: jax.Array


def _log_uniform(key: jax.Array, bounds: tuple[float, float]) -> jax.Array:
    low, high = np.log(bounds[0]), np.log(bounds[1])
    return jnp.exp(jax.random.uniform(key, minval=low, maxval=high))


def sample_hyperparameters(key: jax.Array, ranges: HyperparameterRanges) -> Hyperparameters:
    """Draws one network's hyperparameters from ``ranges`` (vmap over keys for many)."""
    keys = jax.random.split(key, 5)
    return Hyperparameters(
        learning_rate=_log_uniform(keys[0], ranges.learning_rate),
        batch_size=jax.random.choice(keys[1], jnp.asarray(ranges.batch_sizes, jnp.int32)),
        init_scale=_log_uniform(keys[2], ranges.init_scale),
        num_steps=jax.random.randint(keys[3], (), ranges.steps[0], ranges.steps[1] + 1),
        subset_fraction=jax.random.uniform(
            keys[4], minval=ranges.subset_fraction[0], maxval=ranges.subset_fraction[1]
        ),
    )


def make_network_trainer(
    problem: ZooProblem, ranges: HyperparameterRanges
) -> Callable[[jax.Array], tuple[PyTree, Hyperparameters, dict[str, jax.Array]]]:
    """A function ``key -> (final params, hyperparameters, test metrics)`` for one network.

    Args:
        problem: the network family and its data.
        ranges: where the hyperparameters are sampled from.

    Returns:
        The pure per-network training function (vmap it over keys).
    """
    max_steps = ranges.steps[1]
    max_batch = max(ranges.batch_sizes)
    train_count = problem.train_inputs.shape[0]
    adam = optax.scale_by_adam()

    # the data are arguments, not closed-over constants: XLA would otherwise constant-fold
    # through them at compile time
    def train_one(key: jax.Array, data: tuple[jax.Array, ...]):
        train_inputs, train_targets, test_inputs, test_targets = data
        hyper_key, init_key, order_key, batch_key = jax.random.split(key, 4)
        hyper = sample_hyperparameters(hyper_key, ranges)
        params = jax.tree_util.tree_map(lambda w: w * hyper.init_scale, problem.init(init_key))
        order = jax.random.permutation(order_key, train_count)
        subset_size = jnp.maximum(jnp.round(hyper.subset_fraction * train_count), 1)
        example_weights = (jnp.arange(max_batch) < hyper.batch_size) / hyper.batch_size

        def step(carry, inputs):
            params, adam_state = carry
            step_index, step_key = inputs
            positions = jax.random.randint(step_key, (max_batch,), 0, subset_size.astype(jnp.int32))
            batch = order[positions]
            loss_fn = lambda p: jnp.sum(
                example_weights
                * problem.example_losses(
                    p, train_inputs[batch], train_targets[batch]
                )
            )
            grads = jax.grad(loss_fn)(params)
            direction, new_adam_state = adam.update(grads, adam_state)
            active = step_index < hyper.num_steps
            scale = jnp.where(active, -hyper.learning_rate, 0.0)
            new_params = jax.tree_util.tree_map(lambda w, d: w + scale * d, params, direction)
            new_adam_state = jax.tree_util.tree_map(
                lambda new, old: jnp.where(active, new, old), new_adam_state, adam_state
            )
            return (new_params, new_adam_state), None

        steps = (jnp.arange(max_steps), jax.random.split(batch_key, max_steps))
        (params, _), _ = jax.lax.scan(step, (params, adam.init(params)), steps)
        return params, hyper, problem.test_metrics(params, test_inputs, test_targets)

    return train_one


def make_zoo_trainer(
    problem: ZooProblem, ranges: HyperparameterRanges
) -> Callable[[int, np.ndarray], tuple[PyTree, Hyperparameters, dict[str, jax.Array]]]:
    """A jitted ``train(seed, indices)`` that trains a zoo's networks ``indices`` at once.

    Args:
        problem: the network family and its data.
        ranges: hyperparameter ranges.

    Returns:
        ``train(seed, indices)``: for ``(N,)`` global network indices, params with a leading
        axis ``N``, their hyperparameters and test metrics ``(N,)``. Network ``i`` depends
        on ``(seed, i)`` only.
    """
    vmapped = jax.jit(jax.vmap(make_network_trainer(problem, ranges), in_axes=(0, None)))
    data = (problem.train_inputs, problem.train_targets, problem.test_inputs, problem.test_targets)

    def train(seed: int, indices: np.ndarray):
        base = jax.random.key(seed)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices))
        return vmapped(keys, data)

    return train


def train_networks(
    problem: ZooProblem, ranges: HyperparameterRanges, seed: int, indices: np.ndarray
) -> tuple[PyTree, Hyperparameters, dict[str, jax.Array]]:
    """Trains the zoo's networks ``indices`` once (see :func:`make_zoo_trainer`)."""
    return make_zoo_trainer(problem, ranges)(seed, indices)


def generate_zoo(
    directory: str | Path,
    problem: ZooProblem,
    settings: ZooSettings,
    seed: int,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Generates (or resumes) a zoo in ``directory``, one shard per vmapped call.

    A directory holding part of a zoo made with the same problem, settings and seed gets
    the missing shards appended; one made differently is an error (no silent mixing).

    Args:
        directory: where the manifest and shards go.
        problem: the network family and its data.
        settings: size, shard size and hyperparameter ranges.
        seed: the zoo's seed.
        progress: show a progress bar over networks.

    Returns:
        The final manifest.
    """
    description = {
        "problem": problem.name,
        "options": problem.options,
        "seed": seed,
        "shard_size": settings.shard_size,
        "ranges": dataclasses.asdict(settings.ranges),
    }
    writer = ShardWriter(directory, description, problem.spec)
    done = writer.count
    if done > settings.count:
        raise ValueError(
            f"{directory} already holds {done} networks, more than the requested {settings.count}"
        )
    train = make_zoo_trainer(problem, settings.ranges)
    bar = tqdm(total=settings.count, initial=done, unit="net", disable=not progress)
    while done < settings.count:
        indices = np.arange(done, min(done + settings.shard_size, settings.count))
        start = time.perf_counter()
        params, hyper, metrics = jax.block_until_ready(train(seed, indices))
        writer.append(
            indices,
            jax.device_get(params),
            {name: np.asarray(value) for name, value in hyper._asdict().items()},
            {name: np.asarray(value) for name, value in metrics.items()},
            seconds=time.perf_counter() - start,
        )
        done += len(indices)
        bar.update(len(indices))
    bar.close()
    return writer.manifest
