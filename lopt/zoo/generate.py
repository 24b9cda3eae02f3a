"""Training a zoo: many small networks at once, vmapped, each with its own hyperparameters.

Every network ``i`` of a zoo draws its hyperparameters and its training randomness from
``fold_in(key(seed), i)`` alone, so a zoo is the same whether it is generated in one go, in
chunks (vmapped calls) or shards of any size, or resumed. Inside a call every network runs
the same program: hyperparameters that change shapes or loop lengths are masked instead,
so nothing under ``vmap`` has a per-network trip count:

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

from lopt.loggers import progress_bar
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
    """How large a zoo is, how it is cut into shards and how many networks train at once.

    Attributes:
        count: number of networks in the finished zoo.
        shard_size: networks per shard file.
        chunk_size: networks per vmapped training call. It changes speed only, never the
            networks: on CPU, calls of 16-32 small networks keep their activations in cache
            and train fastest per network (measured: 0.17 s per GRU adder at 16, 0.46 s at
            128); the last chunk is padded to this size, so one program serves every call.
        ranges: the hyperparameter ranges.
    """

    count: int = 2000
    shard_size: int = 250
    chunk_size: int = 32
    ranges: HyperparameterRanges = HyperparameterRanges()

    def __post_init__(self) -> None:
        for name in ("count", "shard_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


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
                * problem.example_losses(p, train_inputs[batch], train_targets[batch])
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


class CompiledZooTrainer(NamedTuple):
    """A zoo trainer compiled for one chunk size.

    Attributes:
        train: ``train(seed, indices) -> (params, hyperparameters, metrics)`` for at most
            ``chunk_size`` global network indices (fewer are padded, and the padding cut off).
        chunk_size: networks per compiled call.
        compile_seconds: time spent tracing and compiling.
    """

    train: Callable[[int, np.ndarray], tuple[PyTree, Hyperparameters, dict[str, jax.Array]]]
    chunk_size: int
    compile_seconds: float


def make_zoo_trainer(
    problem: ZooProblem, ranges: HyperparameterRanges, chunk_size: int
) -> CompiledZooTrainer:
    """Compiles the training of ``chunk_size`` of a zoo's networks in one vmapped call.

    Args:
        problem: the network family and its data.
        ranges: hyperparameter ranges.
        chunk_size: networks per call.

    Returns:
        The compiled trainer. Network ``i`` depends on ``(seed, i)`` only: on neither the
        chunk size nor the other networks of its chunk.
    """
    data = (problem.train_inputs, problem.train_targets, problem.test_inputs, problem.test_targets)

    def train_keys(seed: jax.Array, indices: jax.Array, data: tuple[jax.Array, ...]):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(indices)
        return jax.vmap(make_network_trainer(problem, ranges), in_axes=(0, None))(keys, data)

    start = time.perf_counter()
    example = (jnp.zeros((), jnp.uint32), jnp.zeros((chunk_size,), jnp.int32), data)
    compiled = jax.jit(train_keys).lower(*example).compile()
    compile_seconds = time.perf_counter() - start

    def train(seed: int, indices: np.ndarray):
        indices = np.asarray(indices, np.int32)
        if not 0 < len(indices) <= chunk_size:
            raise ValueError(f"a call trains 1 to {chunk_size} networks, got {len(indices)}")
        padded = np.concatenate([indices, np.full(chunk_size - len(indices), indices[-1])])
        outputs = compiled(np.uint32(seed), padded, data)
        return jax.tree_util.tree_map(lambda x: x[: len(indices)], outputs)

    return CompiledZooTrainer(train, chunk_size, compile_seconds)


def train_networks(
    problem: ZooProblem, ranges: HyperparameterRanges, seed: int, indices: np.ndarray
) -> tuple[PyTree, Hyperparameters, dict[str, jax.Array]]:
    """Trains the zoo's networks ``indices`` in one call (see :func:`make_zoo_trainer`)."""
    return make_zoo_trainer(problem, ranges, len(indices)).train(seed, indices)


def generate_zoo(
    directory: str | Path,
    problem: ZooProblem,
    settings: ZooSettings,
    seed: int,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Generates (or resumes) a zoo in ``directory``, ``settings.chunk_size`` networks a call.

    A directory holding part of a zoo made with the same problem, settings and seed gets
    the missing shards appended; one made differently is an error (no silent mixing). The
    chunk size may change between runs: it does not change the networks.

    Args:
        directory: where the manifest and shards go.
        problem: the network family and its data.
        settings: size, shard size, chunk size and hyperparameter ranges.
        seed: the zoo's seed.
        progress: show a progress bar over networks.

    Returns:
        The final manifest; when networks were trained, its ``timing`` entry holds this
        run's chunk size, compile time, training time and number of networks trained.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"the zoo seed must lie in [0, 2**32), got {seed}")
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
    if done == settings.count:
        return writer.manifest
    first_new = done
    chunk_size = min(settings.chunk_size, settings.count - done)
    trainer = make_zoo_trainer(problem, settings.ranges, chunk_size)
    bar = progress_bar(enabled=progress, total=settings.count, initial=done, unit="net")
    train_seconds = 0.0
    while done < settings.count:
        shard_end = min(done + settings.shard_size, settings.count)
        chunks, start = [], time.perf_counter()
        for first in range(done, shard_end, chunk_size):
            indices = np.arange(first, min(first + chunk_size, shard_end))
            chunks.append(jax.device_get(trainer.train(seed, indices)))
            bar.update(len(indices))
        seconds = time.perf_counter() - start
        train_seconds += seconds
        params, hyper, metrics = jax.tree_util.tree_map(
            lambda *parts: np.concatenate(parts), *chunks
        )
        writer.append(
            np.arange(done, shard_end),
            params,
            {name: np.asarray(value) for name, value in hyper._asdict().items()},
            {name: np.asarray(value) for name, value in metrics.items()},
            seconds=seconds,
        )
        done = shard_end
    bar.close()
    return writer.manifest | {
        "timing": {
            "chunk_size": chunk_size,
            "compile_seconds": round(trainer.compile_seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "networks_trained": done - first_new,
        }
    }
