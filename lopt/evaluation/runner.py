"""Runs a task from many seeds under one optimizer: vmapped over runs, one ``lax.scan``.

Each run ``s`` starts from root key ``keys[s]``, split into an initialisation key, a
data-stream key (the training batch of step ``t`` is drawn from ``fold_in(data_key, t)``)
and a held-out key. The ``T`` inner steps of all runs are one jitted ``lax.scan`` whose body
is vmapped over runs; the held-out metrics of the final parameters are the mean over
``num_test_batches`` random batches of a held-out split: ``test`` for an evaluation,
``valid`` for meta-validation and tuning runs made during meta-training.

The meta-parameters are either shared by all runs (a learned optimizer on several seeds) or
given per run (a baseline's learning-rate sweep: one ``theta`` per (rate, seed) pair), so a
whole sweep is one compiled program.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.meta.population import train_step
from lopt.meta.protocols import init_state

PyTree = Any

HELD_OUT_SPLITS = ("valid", "test")


class Trajectory(NamedTuple):
    """Results of ``N`` inner runs (numpy arrays, on the host).

    Attributes:
        train_loss: ``(N, T)`` minibatch training loss of the parameters entering step ``t``.
        test_metrics: ``{name: (N,)}`` held-out metrics of the final parameters (the task's
            ``metrics``: ``loss`` and ``accuracy``, or ``loss``, ``perplexity`` and
            ``bits_per_byte``).
        seconds_per_step: wall time of one inner step of all ``N`` runs together (the
            compiled program's run time divided by ``T``; compilation excluded).
        compile_seconds: time to trace and compile the program.
    """

    train_loss: np.ndarray
    test_metrics: dict[str, np.ndarray]
    seconds_per_step: float
    compile_seconds: float


def make_run_fn(
    opt: Any,
    num_steps: int,
    num_test_batches: int = 10,
    per_run_theta: bool = False,
    held_out_split: str = "test",
) -> Callable[[Any, PyTree, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
    """Builds ``run(task, theta, keys) -> (train_loss (T, N), {metric: (N,)})``.

    Args:
        opt: a learned optimizer (``init``, ``update(theta, grads, state, params, loss=)``).
        num_steps: inner steps ``T`` per run.
        num_test_batches: held-out batches averaged into the final metrics.
        per_run_theta: if true, every leaf of ``theta`` has a leading axis ``N``.
        held_out_split: the split the final metrics are measured on (``test`` or ``valid``).

    Returns:
        A pure function, to be jitted; the task is an argument (its data stay runtime
        buffers rather than compiled-in constants).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not isinstance(num_test_batches, int) or num_test_batches < 1:
        raise ValueError(f"num_test_batches must be a positive integer, got {num_test_batches!r}")
    if held_out_split not in HELD_OUT_SPLITS:
        raise ValueError(f"held_out_split must be one of {HELD_OUT_SPLITS}, got {held_out_split!r}")
    theta_axis = 0 if per_run_theta else None

    def run(task: Any, theta: PyTree, keys: jax.Array):
        split = jax.vmap(lambda key: jax.random.split(key, 3))(keys)
        init_keys, data_keys, test_keys = split[:, 0], split[:, 1], split[:, 2]
        # A sequential map: batching the task's initialiser multiplies its compile time.
        params = jax.lax.map(task.init, init_keys)
        states = jax.vmap(lambda p: init_state(opt, p, num_steps))(params)

        def one_step(theta, params, state, data_key, t):
            return train_step(task, opt, theta, params, state, jax.random.fold_in(data_key, t))

        step_all = jax.vmap(one_step, in_axes=(theta_axis, 0, 0, 0, None))

        def body(carry, t):
            params, states = carry
            params, states, loss = step_all(theta, params, states, data_keys, t)
            return (params, states), loss

        (params, _), losses = jax.lax.scan(body, (params, states), jnp.arange(num_steps))

        def held_out(params, key):
            batch_keys = jax.random.split(key, num_test_batches)
            metrics = jax.vmap(lambda k: task.metrics(params, task.batch(k, held_out_split)))(
                batch_keys
            )
            return jax.tree.map(lambda x: x.mean(axis=0), metrics)

        return losses, jax.vmap(held_out)(params, test_keys)

    return run


def run_seeds(
    task: Any,
    opt: Any,
    theta: PyTree,
    keys: jax.Array,
    num_steps: int,
    *,
    num_test_batches: int = 10,
    per_run_theta: bool = False,
    held_out_split: str = "test",
) -> Trajectory:
    """Trains ``task`` from each root key for ``num_steps`` steps with ``opt`` and ``theta``.

    Compiles ahead of time, then times one execution of the compiled program.

    Args:
        task: a task (``init``, ``loss``, ``batch(key, split)``, ``metrics``; a pytree).
        opt: a learned optimizer.
        theta: its meta-parameters; with ``per_run_theta`` one per run (leading axis ``N``).
        keys: raw uint32 root keys ``(N, 2)`` (:func:`lopt.evaluation.seeds.seed_keys`).
        num_steps: inner steps ``T``.
        num_test_batches: held-out batches averaged into the final metrics.
        per_run_theta: whether ``theta`` has a leading run axis.
        held_out_split: the split of the held-out metrics (``test`` or ``valid``).

    Returns:
        A :class:`Trajectory`.
    """
    keys = jnp.asarray(keys)
    if keys.ndim != 2 or keys.shape[-1] != 2 or keys.dtype != jnp.uint32:
        raise ValueError(f"keys must be raw uint32 keys (N, 2), got {keys.dtype} {keys.shape}")
    theta = jax.tree.map(jnp.asarray, theta)
    if per_run_theta:
        sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(theta)}
        if sizes != {keys.shape[0]}:
            raise ValueError(
                f"per-run theta must have a leading axis of {keys.shape[0]} (one per key) on "
                f"every leaf; got leading sizes {sorted(map(str, sizes))}"
            )
    run = make_run_fn(opt, num_steps, num_test_batches, per_run_theta, held_out_split)
    start = time.perf_counter()
    compiled = jax.jit(run).lower(task, theta, keys).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    losses, metrics = jax.block_until_ready(compiled(task, theta, keys))
    seconds = time.perf_counter() - start
    return Trajectory(
        train_loss=np.asarray(losses, np.float64).T,
        test_metrics={name: np.asarray(value, np.float64) for name, value in metrics.items()},
        seconds_per_step=seconds / num_steps,
        compile_seconds=compile_seconds,
    )


def stack_trees(trees: list[PyTree]) -> PyTree:
    """Stacks pytrees of identical structure along a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
