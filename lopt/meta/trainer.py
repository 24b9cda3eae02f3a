"""Meta-training: estimator + outer optax optimizer, one jitted step over a pytree state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, Mesh

from lopt.distributed import place
from lopt.meta.base import EstimateInfo, Estimator
from lopt.meta.loop import LoopHooks, Record, last_step_metrics, outer_loop
from lopt.meta.objective import MetaObjective
from lopt.meta.outer import clip_by_global_norm as clip_by_global_norm
from lopt.meta.outer import default_outer_optimizer
from lopt.meta.population import Unroller, make_unroller, raw_key
from lopt.meta.protocols import LearnedOptimizerLike, TaskLike, check_methods, initial_theta
from lopt.meta.ravel import ravel_theta
from lopt.meta.schedules import EpisodeSchedule
from lopt.meta.sharding import estimator_state_shardings, replicated_shardings
from lopt.meta.tree_utils import all_finite, global_norm, tree_select
from lopt.persistence import tree_mismatch

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
        place: ``MetaState -> MetaState``: a state's values (host arrays, e.g. a restored
            checkpoint, the same on every process) on the devices ``step`` runs on, as
            ``init`` places them (identity without a mesh).
    """

    init: Callable[..., MetaState]
    step: Callable[[MetaState], tuple[MetaState, dict[str, jax.Array]]]
    inner_steps_per_step: int
    unroller: Unroller
    estimator: Estimator
    outer_opt: optax.GradientTransformation
    config: dict
    place: Callable[[MetaState], MetaState]


def make_meta_trainer(
    task: TaskLike | Sequence[TaskLike],
    opt: LearnedOptimizerLike,
    estimator: Estimator,
    outer_opt: optax.GradientTransformation | None = None,
    *,
    schedule: EpisodeSchedule | int,
    objective: MetaObjective | dict | None = None,
    mesh: Mesh | None = None,
    particle_axis: str | None = None,
) -> MetaTrainer:
    """Builds a meta-training run.

    A *task family* (a sequence of tasks of one architecture: other widths, batch sizes or
    data) trains one theta on all its members: each member runs its own population of the
    estimator's size, and the meta-gradient is the mean of the members' estimates.

    Args:
        task: the inner task (:class:`~lopt.meta.protocols.TaskLike`), or a family of them
            whose initial thetas have one structure and shape.
        opt: the learned optimizer (``init_meta``, ``init``, ``update``;
            :class:`~lopt.meta.protocols.LearnedOptimizerLike`).
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
        state unchanged and reports ``skipped = 1``. For a family, ``unroller`` is the first
        member's and the estimator's state a tuple of the members' states.

    Raises:
        ValueError: an empty family, or members whose thetas differ.
    """
    if not isinstance(estimator, Estimator):
        raise TypeError(f"estimator must be an Estimator, got {type(estimator).__name__}")
    check_methods(opt, ("init_meta",), "learned optimizer")
    outer_opt = default_outer_optimizer() if outer_opt is None else outer_opt
    # a sequence of tasks, not a task that happens to be a NamedTuple
    family = isinstance(task, list | tuple) and not hasattr(task, "_fields")
    members = tuple(task) if family else (task,)
    if not members:
        raise ValueError("a task family needs at least one task")
    unrollers = tuple(make_unroller(member, opt, schedule, objective) for member in members)
    unroller = unrollers[0]
    if family:
        check_one_theta(opt, members)
    init = _state_initializer(unrollers, estimator, outer_opt, family)
    step = _outer_step(unrollers, estimator, outer_opt, family)
    if mesh is None:
        jit_init, jit_step, place = jax.jit(init), jax.jit(step), _unchanged
    else:
        jit_init, jit_step, place = _jit_sharded(init, step, estimator, mesh, particle_axis)
    names = [getattr(member, "name", None) for member in members]
    config = {
        "estimator": estimator.config,
        "schedule": unroller.schedule.config,
        "objective": unroller.objective.config,
        "optimizer": getattr(opt, "config", None),
        "task": names if family else names[0],
    }
    return MetaTrainer(
        init=jit_init,
        step=jit_step,
        inner_steps_per_step=sum(estimator.inner_steps(u) for u in unrollers),
        unroller=unroller,
        estimator=estimator,
        outer_opt=outer_opt,
        config=config,
        place=place,
    )


def _unchanged(state: MetaState) -> MetaState:
    return state


def check_one_theta(opt: LearnedOptimizerLike, members: Sequence[TaskLike]) -> None:
    """Checks that every member of a task family gets a theta of the first one's structure
    and shapes (so one theta trains on all of them).

    Raises:
        ValueError: naming the first member that does not fit the optimizer or whose theta
            differs, and how.
    """
    key = jax.random.PRNGKey(0)
    shapes = []
    for index, member in enumerate(members):
        try:
            shapes.append(jax.eval_shape(lambda t=member: initial_theta(opt, t, key)))
        except ValueError as err:
            raise ValueError(
                f"task family member {index} ({getattr(member, 'name', '?')}) does not fit "
                f"the learned optimizer: {err}"
            ) from None
    for index, other in enumerate(shapes[1:], start=1):
        # One theta is mapped over both trees leaf by leaf, so the order matters too.
        mismatch = tree_mismatch(shapes[0], other, ordered=True)
        if mismatch is not None:
            raise ValueError(
                f"task family member {index} ({getattr(members[index], 'name', '?')}) needs "
                f"another theta than member 0: {mismatch}; a family's tasks share one "
                "architecture (their permuted axes may differ in length, not their fixed ones)"
            )


def _state_initializer(
    unrollers: tuple[Unroller, ...],
    estimator: Estimator,
    outer_opt: optax.GradientTransformation,
    family: bool,
) -> Callable[..., MetaState]:
    """``MetaTrainer.init`` before jit: theta (given, or the optimizer's initial one for the
    first task), the outer optimizer's state, and the estimator's state built on the flat
    theta (for a family, one per member, each from its own key)."""

    def init(key: jax.Array, theta: PyTree | None = None) -> MetaState:
        theta_key, estimator_key = jax.random.split(raw_key(key))
        if theta is None:
            theta = initial_theta(unrollers[0].opt, unrollers[0].task, theta_key)
        if not family:
            flat = ravel_theta(theta, unrollers[0])
            estimator_state = estimator.init(estimator_key, flat.vector, flat.unroller)
        else:
            member_keys = jax.random.split(estimator_key, len(unrollers))
            estimator_state = tuple(
                estimator.init(member_key, flat.vector, flat.unroller)
                for member_key, flat in zip(
                    member_keys, (ravel_theta(theta, u) for u in unrollers), strict=True
                )
            )
        return MetaState(
            theta=theta,
            outer_state=outer_opt.init(theta),
            estimator_state=estimator_state,
            step=jnp.zeros((), jnp.int32),
        )

    return init


def _family_estimate(
    theta: PyTree, states: tuple, unrollers: tuple[Unroller, ...], estimator: Estimator
) -> tuple[jax.Array, tuple, EstimateInfo]:
    """The mean of the members' estimates (flat), their next states, and the diagnostics:
    losses, objective and half-cosine averaged, counts summed."""
    grads, next_states, infos = [], [], []
    for unroller, member_state in zip(unrollers, states, strict=True):
        flat = ravel_theta(theta, unroller)
        grad, member_state, info = estimator.estimate(flat.vector, member_state, flat.unroller)
        grads.append(grad)
        next_states.append(member_state)
        infos.append(info)
    mean = lambda values: jnp.mean(jnp.stack(values), axis=0)
    info = EstimateInfo(
        meta_loss=mean([i.meta_loss for i in infos]),
        objective=mean([i.objective for i in infos]),
        num_episodes_ended=sum(i.num_episodes_ended for i in infos),
        num_nonfinite=sum(i.num_nonfinite for i in infos),
        half_cosine=mean([jnp.asarray(i.half_cosine, jnp.float32) for i in infos]),
    )
    return mean(grads), tuple(next_states), info


def _outer_step(
    unrollers: tuple[Unroller, ...],
    estimator: Estimator,
    outer_opt: optax.GradientTransformation,
    family: bool,
) -> Callable[[MetaState], tuple[MetaState, dict[str, jax.Array]]]:
    """``MetaTrainer.step`` before jit: estimate on the flat theta (for a family, the mean
    of its members' estimates), update theta's pytree, and reject an update that is not
    finite."""

    def step(state: MetaState) -> tuple[MetaState, dict[str, jax.Array]]:
        flat = ravel_theta(state.theta, unrollers[0])
        if family:
            flat_grad, estimator_state, info = _family_estimate(
                state.theta, state.estimator_state, unrollers, estimator
            )
        else:
            flat_grad, estimator_state, info = estimator.estimate(
                flat.vector, state.estimator_state, flat.unroller
            )
        grad = flat.unravel(flat_grad)
        grad_finite = all_finite(grad)
        safe_grad = tree_select(grad_finite, grad, jax.tree.map(jnp.zeros_like, grad))
        updates, outer_state = outer_opt.update(safe_grad, state.outer_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        accept = grad_finite & all_finite(theta)
        new_state = MetaState(
            theta=tree_select(accept, theta, state.theta),
            outer_state=tree_select(accept, outer_state, state.outer_state),
            estimator_state=estimator_state,
            step=state.step + 1,
        )
        metrics = {
            "meta_loss": info.meta_loss,
            "objective": info.objective,
            "grad_norm": global_norm(grad),
            "num_episodes_ended": info.num_episodes_ended,
            "num_nonfinite": info.num_nonfinite,
            "half_cosine": info.half_cosine,
            "skipped": (~accept).astype(jnp.int32),
        }
        return new_state, metrics

    return step


def _jit_sharded(
    init: Callable[..., MetaState],
    step: Callable[[MetaState], tuple[MetaState, dict[str, jax.Array]]],
    estimator: Estimator,
    mesh: Mesh,
    particle_axis: str | None,
) -> tuple[
    Callable[..., MetaState],
    Callable[[MetaState], tuple[MetaState, dict]],
    Callable[[MetaState], MetaState],
]:
    """``init`` and ``step`` jitted with the state's particle axes sharded over the mesh's
    ``particle_axis`` (default: its first) and everything else replicated, and the function
    that places a state's values so."""
    axis = mesh.axis_names[0] if particle_axis is None else particle_axis
    # The step is written for compiler-propagated (GSPMD) sharding: only its inputs and
    # outputs are pinned. Meshes with explicit axes (jax.make_mesh's default) would make
    # every intermediate's sharding part of its type, so they are used as auto meshes.
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)
    state_shape = jax.eval_shape(init, jax.random.PRNGKey(0))
    member_shardings = lambda member: estimator_state_shardings(
        member, estimator.particle_fields, mesh, axis
    )
    estimator_state = state_shape.estimator_state
    state_sharding = MetaState(
        theta=replicated_shardings(state_shape.theta, mesh),
        outer_state=replicated_shardings(state_shape.outer_state, mesh),
        estimator_state=(
            tuple(member_shardings(member) for member in estimator_state)
            if isinstance(estimator_state, tuple) and not hasattr(estimator_state, "_fields")
            else member_shardings(estimator_state)
        ),
        step=replicated_shardings(state_shape.step, mesh),
    )
    jit_init = jax.jit(init, out_shardings=state_sharding)
    jit_step = jax.jit(step, in_shardings=(state_sharding,), out_shardings=(state_sharding, None))
    return jit_init, jit_step, lambda state: place(state, state_sharding)


def meta_train(
    trainer: MetaTrainer,
    state: MetaState,
    num_steps: int,
    *,
    log_every: int = 10,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[MetaState, list[dict[str, float]]]:
    """Runs ``num_steps`` outer steps, logging the first, every ``log_every``-th and the last.

    Each record holds the metrics of its own step; its ``inner_steps_per_sec`` is measured
    over the steps since the previous record (see :mod:`lopt.meta.loop`: the first record's
    is NaN, so no figure includes compilation).

    Args:
        trainer: from :func:`make_meta_trainer`.
        state: the state to continue from.
        num_steps: outer steps to run.
        log_every: outer steps between logs, counted from ``state``.
        callback: called as ``callback(step, record)`` at each log.

    Returns:
        The final state and the list of logged records (floats, plus ``step`` and
        ``inner_steps_per_sec``).
    """
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    start = int(state.step)
    end = start + num_steps

    def log_due(step: int) -> bool:
        return step == start + 1 or (step - start) % log_every == 0 or step == end

    def on_log(step: int, record: Record) -> None:
        if callback is not None:
            callback(step, record)

    return outer_loop(
        trainer.step,
        state,
        start,
        end,
        inner_steps_per_step=trainer.inner_steps_per_step,
        log_due=log_due,
        reducer=last_step_metrics(),
        hooks=LoopHooks(on_log=on_log),
    )
