"""The outer loop: estimator + outer optax optimizer, one jitted step over a pytree state."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, Mesh

from lopt.meta.base import Estimator
from lopt.meta.objective import MetaObjective
from lopt.meta.population import Unroller, make_unroller, raw_key
from lopt.meta.schedules import EpisodeSchedule
from lopt.meta.sharding import estimator_state_shardings, replicated_shardings

PyTree = Any


class MetaState(NamedTuple):
    """Everything a meta-training run is: save it to resume bit-for-bit.

    Attributes:
        theta: meta-parameters of the learned optimizer.
        outer_state: state of the outer optax optimizer.
        estimator_state: the estimator's state (particle populations, accumulators, keys).
        step: int32, outer steps taken.
    """

    theta: PyTree
    outer_state: optax.OptState
    estimator_state: PyTree
    step: jax.Array


class MetaTrainer(NamedTuple):
    """A meta-training run's functions (built by :func:`make_meta_trainer`).

    Attributes:
        init: ``(key, theta=None) -> MetaState`` (theta from ``opt.init_meta`` unless given).
        step: jitted ``MetaState -> (MetaState, metrics)``; metrics are scalar arrays:
            ``meta_loss`` (mean inner training loss of the unroll), ``objective`` (the
            meta-objective), ``grad_norm`` (global norm of the estimate, before the outer
            optimizer's clipping), ``num_episodes_ended``, ``num_nonfinite`` (groups masked
            out and reset) and ``skipped`` (1 if the update was rejected as non-finite).
        inner_steps_per_step: particle-steps one ``step`` runs.
        unroller: the population functions (task, learned optimizer, schedule, objective).
        estimator: the estimator.
        outer_opt: the outer optax transformation.
        config: JSON-serialisable description of the run's meta-training setup.
    """

    init: Callable[..., MetaState]
    step: Callable[[MetaState], tuple[MetaState, dict[str, jax.Array]]]
    inner_steps_per_step: int
    unroller: Unroller
    estimator: Estimator
    outer_opt: optax.GradientTransformation
    config: dict


def default_outer_optimizer(
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    max_grad_norm: float = 1.0,
) -> optax.GradientTransformation:
    """Adam with a linear learning-rate warmup, after global-norm gradient clipping.

    Args:
        learning_rate: peak Adam learning rate.
        warmup_steps: outer steps over which the rate ramps linearly from 0 (0: no warmup).
        max_grad_norm: global-norm clipping threshold applied to the meta-gradient.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps:

        def rate(count: jax.Array) -> jax.Array:
            # Starts at learning_rate / warmup_steps: the first update is never wasted.
            return learning_rate * jnp.minimum(1.0, (count + 1) / warmup_steps)

    else:
        rate = learning_rate
    return optax.chain(clip_by_global_norm(max_grad_norm), optax.adam(rate))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` whose norm cannot overflow.

    Evolution-strategy estimates from particles that are diverging but still finite can have
    a global norm beyond float32 range; optax's version then scales the update to zero,
    whereas this one keeps its direction.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")

    def clip(updates: PyTree, params: PyTree | None = None) -> PyTree:
        del params
        norm = _global_norm(updates)
        factor = jnp.where(norm > max_norm, max_norm / norm, 1.0)
        return jax.tree.map(lambda u: (u * factor).astype(u.dtype), updates)

    return optax.stateless(clip)


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def _initial_theta(opt: Any, task: Any, key: jax.Array) -> PyTree:
    """``opt.init_meta(key)``, given the task's parameter shapes where it accepts them (some
    update networks size themselves by axes the permutation spec leaves fixed)."""
    try:
        accepts_params = "params" in inspect.signature(opt.init_meta).parameters
    except (TypeError, ValueError):
        accepts_params = False
    if accepts_params:
        return opt.init_meta(key, params=jax.eval_shape(task.init, key))
    return opt.init_meta(key)


def _global_norm(tree: PyTree) -> jax.Array:
    """Global L2 norm, rescaled by the largest entry first so huge finite values do not
    overflow to inf."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros(())
    largest = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))
    safe = jnp.where((largest > 0) & jnp.isfinite(largest), largest, 1.0)
    total = sum(jnp.sum(jnp.square(x / safe)) for x in leaves)
    return jnp.where(jnp.isfinite(largest), safe * jnp.sqrt(total), largest)


def _flat_view(
    theta: PyTree, unroller: Unroller
) -> tuple[jax.Array, Callable[[jax.Array], PyTree], Unroller]:
    """Theta as one vector, the map back to its pytree, and the unroller that takes such
    vectors (one per particle).

    Estimators then sample, perturb, accumulate and combine one array instead of one per
    leaf of theta: for update networks with dozens of parameter tensors that removes
    hundreds of small kernels from the compiled outer step.
    """
    flat, unravel = jax.flatten_util.ravel_pytree(theta)

    def unroll(thetas: jax.Array, *args: Any, **kwargs: Any):
        return unroller.unroll(jax.vmap(unravel)(thetas), *args, **kwargs)

    return flat, unravel, unroller._replace(unroll=unroll)


def _select(flag: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), on_true, on_false)


def make_meta_trainer(
    task: Any,
    opt: Any,
    estimator: Estimator,
    outer_opt: optax.GradientTransformation | None = None,
    *,
    schedule: EpisodeSchedule | int,
    objective: MetaObjective | dict | None = None,
    mesh: Mesh | None = None,
    particle_axis: str | None = None,
) -> MetaTrainer:
    """Builds a meta-training run.

    Args:
        task: the inner task.
        opt: the learned optimizer (``init_meta``, ``init``, ``update``).
        estimator: a meta-gradient estimator (:func:`~lopt.meta.pes`,
            :func:`~lopt.meta.tbptt`, :func:`~lopt.meta.full_es`, ...).
        outer_opt: any optax transformation for theta (default:
            :func:`default_outer_optimizer`).
        schedule: inner episode lengths: an :class:`EpisodeSchedule` or a constant int.
        objective: the meta-objective (default: mean training loss over each unroll).
        mesh: optional device mesh; the estimator's particle axes are sharded over
            ``particle_axis`` and everything else is replicated.
        particle_axis: mesh axis for particles (default: the mesh's first axis).

    Returns:
        A :class:`MetaTrainer`. ``step`` never produces a non-finite theta: a non-finite
        estimate, or an update that would make theta non-finite, leaves theta and the outer
        state unchanged and reports ``skipped = 1``.
    """
    if not isinstance(estimator, Estimator):
        raise TypeError(f"estimator must be an Estimator, got {type(estimator).__name__}")
    if not callable(getattr(opt, "init_meta", None)):
        raise TypeError(f"learned optimizer has no callable 'init_meta'; got {type(opt).__name__}")
    outer_opt = default_outer_optimizer() if outer_opt is None else outer_opt
    unroller = make_unroller(task, opt, schedule, objective)

    def init(key: jax.Array, theta: PyTree | None = None) -> MetaState:
        theta_key, estimator_key = jax.random.split(raw_key(key))
        if theta is None:
            theta = _initial_theta(opt, task, theta_key)
        flat_theta, _, flat_unroller = _flat_view(theta, unroller)
        return MetaState(
            theta=theta,
            outer_state=outer_opt.init(theta),
            estimator_state=estimator.init(estimator_key, flat_theta, flat_unroller),
            step=jnp.zeros((), jnp.int32),
        )

    def step(state: MetaState) -> tuple[MetaState, dict[str, jax.Array]]:
        flat_theta, unravel, flat_unroller = _flat_view(state.theta, unroller)
        flat_grad, estimator_state, info = estimator.estimate(
            flat_theta, state.estimator_state, flat_unroller
        )
        grad = unravel(flat_grad)
        grad_finite = _all_finite(grad)
        safe_grad = _select(grad_finite, grad, jax.tree.map(jnp.zeros_like, grad))
        updates, outer_state = outer_opt.update(safe_grad, state.outer_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        accept = grad_finite & _all_finite(theta)
        new_state = MetaState(
            theta=_select(accept, theta, state.theta),
            outer_state=_select(accept, outer_state, state.outer_state),
            estimator_state=estimator_state,
            step=state.step + 1,
        )
        metrics = {
            "meta_loss": info.meta_loss,
            "objective": info.objective,
            "grad_norm": _global_norm(grad),
            "num_episodes_ended": info.num_episodes_ended,
            "num_nonfinite": info.num_nonfinite,
            "half_cosine": info.half_cosine,
            "skipped": (~accept).astype(jnp.int32),
        }
        return new_state, metrics

    if mesh is None:
        jit_init, jit_step = jax.jit(init), jax.jit(step)
    else:
        axis = mesh.axis_names[0] if particle_axis is None else particle_axis
        # The step is written for compiler-propagated (GSPMD) sharding: only its inputs and
        # outputs are pinned. Meshes with explicit axes (jax.make_mesh's default) would make
        # every intermediate's sharding part of its type, so they are used as auto meshes.
        mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)
        state_shape = jax.eval_shape(init, jax.random.PRNGKey(0))
        state_sharding = MetaState(
            theta=replicated_shardings(state_shape.theta, mesh),
            outer_state=replicated_shardings(state_shape.outer_state, mesh),
            estimator_state=estimator_state_shardings(
                state_shape.estimator_state, estimator.particle_fields, mesh, axis
            ),
            step=replicated_shardings(state_shape.step, mesh),
        )
        jit_init = jax.jit(init, out_shardings=state_sharding)
        jit_step = jax.jit(
            step, in_shardings=(state_sharding,), out_shardings=(state_sharding, None)
        )

    config = {
        "estimator": estimator.config,
        "schedule": unroller.schedule.config,
        "objective": unroller.objective.config,
        "optimizer": getattr(opt, "config", None),
        "task": getattr(task, "name", None),
    }
    return MetaTrainer(
        init=jit_init,
        step=jit_step,
        inner_steps_per_step=estimator.inner_steps(unroller),
        unroller=unroller,
        estimator=estimator,
        outer_opt=outer_opt,
        config=config,
    )


def meta_train(
    trainer: MetaTrainer,
    state: MetaState,
    num_steps: int,
    *,
    log_every: int = 10,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[MetaState, list[dict[str, float]]]:
    """Runs ``num_steps`` outer steps, logging every ``log_every``.

    Throughput is measured here, outside ``jit``: ``inner_steps_per_sec`` is the number of
    particle-steps run since the previous log divided by the wall time in between (the
    first logged interval excludes compilation; its figure covers the steps after the first).

    Args:
        trainer: from :func:`make_meta_trainer`.
        state: the state to continue from.
        num_steps: outer steps to run.
        log_every: outer steps between logs.
        callback: called as ``callback(step, metrics)`` at each log.

    Returns:
        The final state and the list of logged metrics (floats, plus ``step`` and
        ``inner_steps_per_sec``).
    """
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    history: list[dict[str, float]] = []
    last_time, last_step = None, None
    for i in range(num_steps):
        state, metrics = trainer.step(state)
        first = i == 0
        if first or (i + 1) % log_every == 0 or i + 1 == num_steps:
            metrics = jax.device_get(metrics)
            now, step = time.perf_counter(), int(state.step)
            record = {name: float(value) for name, value in metrics.items()}
            record["step"] = step
            if last_time is None:
                record["inner_steps_per_sec"] = float("nan")
            else:
                done = (step - last_step) * trainer.inner_steps_per_step
                record["inner_steps_per_sec"] = done / max(now - last_time, 1e-9)
            last_time, last_step = now, step
            history.append(record)
            if callback is not None:
                callback(step, record)
    return state, history
