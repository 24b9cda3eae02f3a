"""The population engine: resets inside truncations, staggering, objectives, schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_meta_problems import LearnedMomentum, QuadraticTask

import lopt.learned as learned
from lopt.meta import (
    MetaObjective,
    constant_length,
    log_uniform_length,
    make_unroller,
    schedule_from_config,
)
from lopt.meta.base import broadcast_theta
from lopt.tasks import get_task


def particle(population, i):
    return jax.tree.map(lambda x: x[i], population)


def test_resets_inside_a_truncation_match_a_stepwise_replay():
    task, opt = QuadraticTask(), LearnedMomentum()
    theta = opt.init_meta(None)
    unroller = make_unroller(task, opt, constant_length(3))
    num_groups, group_size, num_steps = 3, 2, 8
    population = unroller.init_population(jax.random.PRNGKey(0), num_groups, group_size, True)
    thetas = broadcast_theta(theta, num_groups * group_size)
    final, record = jax.jit(lambda t, p: unroller.unroll(t, p, num_steps, group_size=group_size))(
        thetas, population
    )

    assert record.reset.shape == (num_steps, num_groups)
    # Episodes of 3 steps in an 8-step truncation: every group restarts at least twice.
    assert np.all(np.asarray(record.reset).sum(0) >= 2)
    for i in range(num_groups * group_size):
        replayed = particle(population, i)
        first_params = []
        for t in range(num_steps):
            replayed, loss, _ = unroller.inner_step(theta, replayed)
            np.testing.assert_allclose(record.loss[t, i], loss, rtol=1e-6)
            assert bool(record.reset[t, i // group_size]) == bool(replayed.step >= 3)
            if replayed.step >= 3:
                replayed = unroller.fresh_particle(replayed.key)
                first_params.append(np.asarray(replayed.params["w"]))
        for got, want in zip(
            jax.tree.leaves(particle(final, i)), jax.tree.leaves(replayed), strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-6)
        # Every new episode starts from its own initialisation.
        assert not np.allclose(first_params[0], first_params[1])
    # Members of a group share init and data, so equal thetas give equal trajectories.
    np.testing.assert_array_equal(record.loss[:, 0], record.loss[:, 1])
    assert not np.array_equal(record.loss[:, 0], record.loss[:, 2])


@pytest.mark.parametrize("stagger", [True, False])
def test_staggered_population_does_not_reset_in_lockstep(stagger):
    task, opt = QuadraticTask(), LearnedMomentum()
    theta = opt.init_meta(None)
    episode, truncation, num_groups = 16, 4, 32
    unroller = make_unroller(task, opt, constant_length(episode))
    population = unroller.init_population(jax.random.PRNGKey(1), num_groups, 1, stagger)
    steps = np.asarray(population.step)
    assert np.all((steps >= 0) & (steps < episode))
    thetas = broadcast_theta(theta, num_groups)
    unroll = jax.jit(lambda p: unroller.unroll(thetas, p, truncation))
    resets_per_truncation = []
    for _ in range(episode // truncation):
        population, record = unroll(population)
        resets_per_truncation.append(int(record.reset.sum()))
    # Over one episode length every particle restarts exactly once either way ...
    assert sum(resets_per_truncation) == num_groups
    if stagger:
        # ... but staggered particles spread their restarts over the truncations.
        assert len(set(steps.tolist())) > episode // 2
        assert max(resets_per_truncation) < num_groups // 2
    else:
        assert np.all(steps == 0)
        assert max(resets_per_truncation) == num_groups


def test_objective_variants():
    task, opt = QuadraticTask(test_shift=3.0), LearnedMomentum()
    theta = opt.init_meta(None)
    thetas = broadcast_theta(theta, 4)

    def run(objective):
        unroller = make_unroller(task, opt, constant_length(5), objective)
        population = unroller.init_population(jax.random.PRNGKey(2), 4, 1, False)
        return unroller.unroll(thetas, population, 7)[1]

    train = run(MetaObjective())
    np.testing.assert_array_equal(train.objective, train.loss)
    logged = run(MetaObjective(transform="log", clip=-1.0))
    np.testing.assert_allclose(logged.objective, np.minimum(np.log(train.loss), -1.0), rtol=1e-6)
    held_out = run(MetaObjective(split="valid"))
    np.testing.assert_array_equal(held_out.loss, train.loss)  # same inner training
    # Shifted held-out targets cost 0.5 * sum(a) * 3^2 = 15.75 more on average.
    assert float(held_out.objective.mean() - train.loss.mean()) > 10.0
    ended = np.asarray(train.ended)
    assert ended.sum() == 4 and np.all(ended[4])
    weights = MetaObjective(reduction="final").step_weights(train.ended)
    np.testing.assert_array_equal(weights, ended.astype(np.float32))
    # The last 40% of each 5-step episode (2 steps) counts, weighted 1 / 0.4; the unroll's
    # rows 5 and 6 are the second episode's first two steps.
    tail = run(MetaObjective(tail=0.4))
    factor = np.asarray([0, 0, 0, 2.5, 2.5, 0, 0], np.float32)[:, None]
    np.testing.assert_allclose(tail.objective, factor * np.asarray(train.loss), rtol=1e-6)


def test_schedules():
    key = jax.random.PRNGKey(0)
    lengths = np.asarray(jax.vmap(log_uniform_length(10, 1000).sample)(jax.random.split(key, 4000)))
    assert lengths.min() >= 10 and lengths.max() <= 1000
    # Log-uniform: each decade holds about half of the draws.
    assert 0.4 < np.mean(lengths < 100) < 0.6
    assert int(constant_length(7).sample(key)) == 7
    schedule = log_uniform_length(5, 50)
    assert schedule_from_config(schedule.config).config == schedule.config


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="split"):
        MetaObjective(split="validation").check()
    for tail in (0.0, 1.5):
        with pytest.raises(ValueError, match="tail must lie in"):
            MetaObjective(tail=tail).check()
    with pytest.raises(ValueError, match="'test' is reserved for the evaluation"):
        MetaObjective(split="test").check()
    with pytest.raises(ValueError, match="min_length"):
        log_uniform_length(50, 5)
    with pytest.raises(ValueError, match="length"):
        constant_length(0)
    with pytest.raises(TypeError, match="task has no callable"):
        make_unroller(object(), LearnedMomentum(), 5)
    unroller = make_unroller(QuadraticTask(), LearnedMomentum(), 5)
    population = unroller.init_population(jax.random.PRNGKey(0), 3, 1)
    with pytest.raises(ValueError, match="groups of 2"):
        unroller.unroll(broadcast_theta(LearnedMomentum().init_meta(None), 3), population, 2, 2)
    assert jnp.all(population.length == 5)


def test_an_optimizer_that_needs_the_run_length_is_given_each_episode_length():
    task = get_task("mlp_digits")
    opt = learned.make_optimizer("deepsets", task.spec, hidden=4, depth=1, time="fraction")
    unroller = make_unroller(task, opt, log_uniform_length(10, 1000))
    population = unroller.init_population(jax.random.PRNGKey(0), 6)
    np.testing.assert_array_equal(population.opt_state.num_steps, population.length)
    assert len(set(np.asarray(population.length).tolist())) > 1
