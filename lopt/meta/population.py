"""A population of inner training runs ("particles") advanced by truncated unrolls.

A particle is one inner training run of a task under a learned optimizer: its parameters,
optimizer state, step counter within the current episode, episode length, and the keys of
its data stream and of its next episode. A population stores ``N = G * M`` particles with
one leading axis, laid out group-major (particle ``g * M + m`` is member ``m`` of group
``g``). Members of a group share every key, so they start from the same initial parameters,
see the same data and reset together; antithetic estimators use groups of two (``theta +
eps`` and ``theta - eps``), others groups of one.

Data stream: the batch of inner step ``t`` of an episode is drawn from
``fold_in(data_key, t)``, so the stream position is the step counter itself and a saved
population resumes bit-for-bit.

Resets: after each inner step a group whose episode has ended (``step >= length``) or one of
whose members produced a non-finite loss is replaced by a fresh episode (new initial
parameters, new data key, new sampled length) by masking with ``jnp.where`` over the pytree.
The fresh states are only computed when some group needs them (a ``lax.cond`` on the whole
population, outside any ``vmap``), so steps without resets do not pay for ``task.init``, and
once per group rather than per member.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.meta.objective import MetaObjective, as_objective
from lopt.meta.protocols import (
    OPTIMIZER_METHODS,
    TASK_METHODS,
    LearnedOptimizerLike,
    TaskLike,
    check_methods,
    init_state,
)
from lopt.meta.schedules import EpisodeSchedule, as_schedule
from lopt.meta.tree_utils import tree_select

PyTree = Any


class ParticleState(NamedTuple):
    """State of one inner run (or of ``N`` runs, with a leading particle axis on every leaf).

    Attributes:
        params: the task's parameter pytree.
        opt_state: the learned optimizer's state for ``params``.
        step: int32, inner steps taken in the current episode.
        length: int32, length of the current episode.
        data_key: uint32 ``(2,)``, key of the current episode's data stream.
        key: uint32 ``(2,)``, source of the next episode's init, data key and length.
    """

    params: PyTree
    opt_state: PyTree
    step: jax.Array
    length: jax.Array
    data_key: jax.Array
    key: jax.Array


class StepRecord(NamedTuple):
    """What one population step reports; ``unroll`` stacks ``K`` of them on a leading axis.

    Attributes:
        loss: float ``(N,)``, training-minibatch loss of the parameters entering the step.
        objective: float ``(N,)``, per-step meta-objective value (split, transform, clip
            applied; see :mod:`lopt.meta.objective`).
        finite: bool ``(N,)``, both of the above are finite and the loss is not above the
            objective's divergence bound (``MetaObjective.max_loss``).
        ended: bool ``(N,)``, this step was the last of its episode.
        reset: bool ``(G,)``, the group was replaced by a fresh episode after this step.
    """

    loss: jax.Array
    objective: jax.Array
    finite: jax.Array
    ended: jax.Array
    reset: jax.Array


class Unroller(NamedTuple):
    """Pure functions running a task under a learned optimizer (built by :func:`make_unroller`).

    Attributes:
        fresh_particle: ``key -> ParticleState``, a new episode (no particle axis).
        fresh_particles: ``keys (n, 2) -> ParticleState`` with leading axis ``n``.
        init_population: ``(key, num_groups, group_size, stagger) -> ParticleState`` with a
            leading axis of ``num_groups * group_size``. With ``stagger`` each group starts at
            a step counter uniform in ``[0, length)`` so the population does not reset in
            lockstep (its parameters are fresh; only the first episode is shortened).
        inner_step: ``(theta, particle) -> (particle, loss, objective)``, one inner step of
            one particle, without reset handling.
        unroll: ``(thetas, population, num_steps, group_size, reset=True) -> (population,
            StepRecord)``: ``num_steps`` inner steps of every particle in one ``lax.scan``,
            vmapped over particles; ``thetas`` carries one meta-parameter pytree per particle
            (leading axis ``N``). ``reset=False`` lets ended episodes run on unchanged.
            Estimators get an unroller taking flat thetas ``(N, D)`` instead
            (:func:`lopt.meta.ravel.ravel_theta`).
        task: the inner task.
        opt: the learned optimizer.
        schedule: the episode-length schedule.
        objective: the meta-objective.
    """

    fresh_particle: Callable[..., ParticleState]
    fresh_particles: Callable[..., ParticleState]
    init_population: Callable[..., ParticleState]
    inner_step: Callable[..., tuple[ParticleState, jax.Array, jax.Array]]
    unroll: Callable[..., tuple[ParticleState, StepRecord]]
    task: TaskLike
    opt: LearnedOptimizerLike
    schedule: EpisodeSchedule
    objective: MetaObjective


def raw_key(key: jax.Array) -> jax.Array:
    """Returns ``key`` as a raw uint32 key array (typed keys are unwrapped)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def group_any(flags: jax.Array, group_size: int) -> jax.Array:
    """bool ``(N,)`` -> ``(G,)``: true where any member of the group is true."""
    return flags.reshape(-1, group_size).any(axis=1)


def train_step(
    task: TaskLike,
    opt: LearnedOptimizerLike,
    theta: PyTree,
    params: PyTree,
    opt_state: Any,
    key: jax.Array,
) -> tuple[PyTree, Any, jax.Array]:
    """One inner training step: a training batch from ``key``, loss and gradient, update.

    Returns:
        ``(params, opt_state, loss)``: the updated params and optimizer state, and the loss
        of the params the step started from.
    """
    loss, grads = jax.value_and_grad(task.loss)(params, task.batch(key, "train"))
    updates, opt_state = opt.update(theta, grads, opt_state, params, loss=loss)
    return optax.apply_updates(params, updates), opt_state, loss


def make_unroller(
    task: TaskLike,
    opt: LearnedOptimizerLike,
    schedule: EpisodeSchedule | int,
    objective: MetaObjective | dict | None = None,
) -> Unroller:
    """Builds the pure functions that advance a population of inner runs.

    Args:
        task: a task (``init``, ``loss``, ``batch``; see :class:`~lopt.meta.protocols.TaskLike`).
        opt: a learned optimizer (``init``, ``update(theta, grads, state, params, loss=)``;
            see :class:`~lopt.meta.protocols.LearnedOptimizerLike`).
        schedule: episode-length schedule, or an int for a constant length.
        objective: the meta-objective (default: mean training loss).

    Returns:
        An :class:`Unroller`.
    """
    schedule = as_schedule(schedule)
    objective = as_objective(objective)
    check_methods(task, TASK_METHODS, "task")
    check_methods(opt, OPTIMIZER_METHODS, "learned optimizer")
    fresh_particle = _episode_starter(task, opt, schedule)

    def fresh_particles(keys: jax.Array) -> ParticleState:
        # A sequential map, not vmap: batching the task's initialisers multiplies their
        # compile time, while fresh episodes are rare enough for a loop to cost nothing.
        return jax.lax.map(fresh_particle, keys)

    inner_step = _inner_stepper(task, opt, objective)
    return Unroller(
        fresh_particle=fresh_particle,
        fresh_particles=fresh_particles,
        init_population=_population_starter(fresh_particles),
        inner_step=inner_step,
        unroll=_population_unroller(inner_step, fresh_particles, objective),
        task=task,
        opt=opt,
        schedule=schedule,
        objective=objective,
    )


def _episode_starter(
    task: TaskLike, opt: LearnedOptimizerLike, schedule: EpisodeSchedule
) -> Callable[[jax.Array], ParticleState]:
    """``key -> ParticleState``: a fresh episode (new parameters, data key and length)."""

    def fresh_particle(key: jax.Array) -> ParticleState:
        key, init_key, data_key, length_key = jax.random.split(raw_key(key), 4)
        params = task.init(init_key)
        length = jnp.asarray(schedule.sample(length_key), jnp.int32)
        return ParticleState(
            params=params,
            opt_state=init_state(opt, params, length),
            step=jnp.zeros((), jnp.int32),
            length=length,
            data_key=data_key,
            key=key,
        )

    return fresh_particle


def _population_starter(
    fresh_particles: Callable[[jax.Array], ParticleState],
) -> Callable[..., ParticleState]:
    """``Unroller.init_population`` over the episodes ``fresh_particles`` starts."""

    def init_population(
        key: jax.Array, num_groups: int, group_size: int = 1, stagger: bool = True
    ) -> ParticleState:
        if num_groups < 1 or group_size < 1:
            raise ValueError(
                f"need num_groups >= 1 and group_size >= 1, got {num_groups}, {group_size}"
            )
        stagger_key, *group_keys = jax.random.split(raw_key(key), num_groups + 1)
        groups = fresh_particles(jnp.stack(group_keys))
        if stagger:
            fraction = jax.random.uniform(stagger_key, (num_groups,))
            start = jnp.floor(fraction * groups.length).astype(jnp.int32)
            groups = groups._replace(step=jnp.minimum(start, groups.length - 1))
        return repeat_members(groups, group_size)

    return init_population


def _inner_stepper(
    task: TaskLike, opt: LearnedOptimizerLike, objective: MetaObjective
) -> Callable[..., tuple[ParticleState, jax.Array, jax.Array]]:
    """``Unroller.inner_step``: one inner step of one particle, and its objective value."""

    def inner_step(
        theta: PyTree, particle: ParticleState
    ) -> tuple[ParticleState, jax.Array, jax.Array]:
        step_key = jax.random.fold_in(particle.data_key, particle.step)
        train_key, valid_key = jax.random.split(step_key)
        params, opt_state, loss = train_step(
            task, opt, theta, particle.params, particle.opt_state, train_key
        )
        if objective.split == "valid":
            value = task.loss(particle.params, task.batch(valid_key, "valid"))
        else:
            value = loss
        weight = objective.progress_weight(particle.step, particle.length)
        new = particle._replace(params=params, opt_state=opt_state, step=particle.step + 1)
        return new, loss, objective.step_value(value) * weight

    return inner_step


def _population_unroller(
    inner_step: Callable[..., tuple[ParticleState, jax.Array, jax.Array]],
    fresh_particles: Callable[[jax.Array], ParticleState],
    objective: MetaObjective,
) -> Callable[..., tuple[ParticleState, StepRecord]]:
    """``Unroller.unroll``: ``inner_step`` vmapped over particles, scanned over steps, with
    the resets of ended and diverged groups."""

    def unroll(
        thetas: PyTree,
        population: ParticleState,
        num_steps: int,
        group_size: int = 1,
        reset: bool = True,
    ) -> tuple[ParticleState, StepRecord]:
        num_particles = population.step.shape[0]
        if num_particles % group_size:
            raise ValueError(
                f"population of {num_particles} particles is not divisible into groups of "
                f"{group_size}"
            )

        def restart(pop: ParticleState, mask: jax.Array) -> ParticleState:
            fresh = repeat_members(fresh_particles(pop.key[::group_size]), group_size)
            return tree_select(mask, fresh, pop)

        def body(pop: ParticleState, _: None) -> tuple[ParticleState, StepRecord]:
            pop, loss, value = jax.vmap(inner_step)(thetas, pop)
            finite = ~objective.diverged(loss) & jnp.isfinite(value)
            ended = pop.step == pop.length
            group_reset = group_any((pop.step >= pop.length) | ~finite, group_size)
            if reset:
                mask = jnp.repeat(group_reset, group_size)
                pop = jax.lax.cond(group_reset.any(), restart, lambda p, m: p, pop, mask)
            else:
                group_reset = jnp.zeros_like(group_reset)
            return pop, StepRecord(loss, value, finite, ended, group_reset)

        return jax.lax.scan(body, population, None, length=num_steps)

    return unroll


def repeat_members(groups: PyTree, group_size: int) -> PyTree:
    """Per-group leaves ``(G, ...)`` repeated for every member: ``(G * group_size, ...)``."""
    return jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), groups)
