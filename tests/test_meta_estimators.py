"""Meta-gradient estimators against exactly known gradients.

The statistical tests compare the mean of many independent estimates with the exact gradient
of the smoothed meta-objective (see ``test_meta_problems``) and use the standard error of that
mean, computed from the samples, as the yardstick.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_meta_problems import LearnedMomentum, QuadraticTask, expected_losses

from lopt.meta import MetaObjective, constant_length, make_unroller, pes, tbptt, truncated_es
from lopt.meta.pes import persistent_gradient

SIGMA = 0.1
Z_TOLERANCE = 4.5  # |mean - exact| must stay within this many standard errors


def theta_vector(theta):
    return jnp.stack([theta["log_lr"], theta["momentum"]])


def smoothed_gradient(task, theta, episode, truncation, num_truncations, sigma, num_draws=4000):
    """Exact-in-expectation gradient of the objective PES targets, by pathwise Monte Carlo.

    The run covers ``num_truncations * truncation`` steps (a whole number of episodes, all
    starting fresh); step ``u`` uses ``theta + eps[u // truncation]`` with an independent
    ``eps ~ N(0, sigma^2 I)`` per truncation, and the objective is the mean expected loss over
    all steps. Expected losses are exact (moment recursion), so the only randomness left is
    ``eps``, whose pathwise gradient has a tiny variance; its standard error is returned.
    """
    total = num_truncations * truncation
    assert total % episode == 0
    segment = np.arange(total) // truncation

    def objective(theta_vec, eps):
        per_step = (theta_vec[None] + eps[segment]).reshape(total // episode, episode, 2)
        losses = jax.vmap(lambda p: expected_losses(task, p[:, 0], p[:, 1]))(per_step)
        return losses.sum() / total

    eps = sigma * jax.random.normal(jax.random.PRNGKey(123), (num_draws, num_truncations, 2))
    grads = jax.vmap(jax.grad(objective), in_axes=(None, 0))(theta_vector(theta), eps)
    return np.asarray(grads.mean(0)), np.asarray(grads.std(0) / np.sqrt(num_draws))


def averaged_estimates(estimator, task, opt, theta, episode, num_truncations, num_runs):
    """Per-run averages of ``num_truncations`` consecutive estimates, ``(num_runs, 2)``."""
    unroller = make_unroller(task, opt, constant_length(episode))

    def one_run(key):
        state = estimator.init(key, theta, unroller)

        def body(state, _):
            grad, state, _ = estimator.estimate(theta, state, unroller)
            return state, theta_vector(grad)

        return jax.lax.scan(body, state, None, length=num_truncations)[1].mean(0)

    keys = jax.random.split(jax.random.PRNGKey(7), num_runs)
    return np.asarray(jax.jit(jax.vmap(one_run))(keys))


def z_scores(samples, exact, exact_stderr):
    mean = samples.mean(0)
    stderr = samples.std(0, ddof=1) / np.sqrt(len(samples))
    return (mean - exact) / np.sqrt(stderr**2 + exact_stderr**2)


@pytest.mark.parametrize(
    ("episode", "truncation", "num_truncations"),
    [
        (20, 8, 5),  # an episode boundary in the middle of a truncation
        (3, 8, 3),  # several boundaries inside every truncation
    ],
)
def test_pes_is_unbiased(episode, truncation, num_truncations):
    task, opt = QuadraticTask(), LearnedMomentum()
    theta = opt.init_meta(None)
    exact, exact_stderr = smoothed_gradient(
        task, theta, episode, truncation, num_truncations, SIGMA
    )
    estimator = pes(8, truncation, SIGMA, stagger=False)
    samples = averaged_estimates(estimator, task, opt, theta, episode, num_truncations, 400)
    z = z_scores(samples, exact, exact_stderr)
    assert np.all(np.abs(z) < Z_TOLERANCE), (samples.mean(0), exact, z)


@pytest.mark.slow  # many estimates to show a bias; CI runs it
def test_truncated_es_is_biased_where_pes_is_not():
    task, opt = QuadraticTask(), LearnedMomentum()
    theta = opt.init_meta(None)
    episode, truncation, num_truncations = 40, 4, 10
    exact, exact_stderr = smoothed_gradient(
        task, theta, episode, truncation, num_truncations, SIGMA
    )
    persistent = averaged_estimates(
        pes(8, truncation, SIGMA, stagger=False), task, opt, theta, episode, num_truncations, 400
    )
    greedy = averaged_estimates(
        truncated_es(8, truncation, SIGMA, stagger=False),
        task,
        opt,
        theta,
        episode,
        num_truncations,
        400,
    )
    assert np.all(np.abs(z_scores(persistent, exact, exact_stderr)) < Z_TOLERANCE)
    # Truncated ES cannot see how earlier truncations' meta-parameters shape later losses.
    assert np.max(np.abs(z_scores(greedy, exact, exact_stderr))) > 3 * Z_TOLERANCE


def reference_persistent_gradient(eps, xi, diff, reset):
    """Step by step: each step's loss difference times its own episode's perturbation sum."""
    num_steps, num_pairs = diff.shape
    grad = np.zeros_like(eps)
    new_xi = np.zeros_like(xi)
    for g in range(num_pairs):
        episode_perturbation = xi[g] + eps[g]
        for t in range(num_steps):
            grad[g] += episode_perturbation * diff[t, g]
            if reset[t, g]:
                episode_perturbation = eps[g]  # the next episode starts under eps alone
        new_xi[g] = 0.0 if reset[-1, g] else episode_perturbation
    return grad.sum(0), new_xi


def test_persistent_gradient_matches_stepwise_definition():
    rng = np.random.default_rng(0)
    num_steps, num_pairs = 7, 5
    reset = np.zeros((num_steps, num_pairs), bool)
    reset[3, 1] = True  # one boundary mid-truncation
    reset[[0, 2, 5], 2] = True  # several boundaries
    reset[6, 3] = True  # boundary after the last step: the new episode has not run yet
    reset[[1, 6], 4] = True
    eps = rng.normal(size=(num_pairs, 3)).astype(np.float32)
    xi = rng.normal(size=(num_pairs, 3)).astype(np.float32)
    diff = rng.normal(size=(num_steps, num_pairs)).astype(np.float32)
    grad, new_xi = persistent_gradient(
        {"a": jnp.asarray(eps)}, {"a": jnp.asarray(xi)}, jnp.asarray(diff), jnp.asarray(reset)
    )
    expected_grad, expected_xi = reference_persistent_gradient(eps, xi, diff, reset)
    np.testing.assert_allclose(grad["a"], expected_grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_xi["a"], expected_xi, rtol=1e-6, atol=1e-6)


def replay_objective(unroller, theta, particle, num_steps, objective_weights):
    """Plain Python unroll of one particle (resets by hand) and its weighted objective."""
    total = 0.0
    for t in range(num_steps):
        particle, _, value = unroller.inner_step(theta, particle)
        ended = particle.step == particle.length
        total = total + objective_weights(t, ended) * value
        if bool(particle.step >= particle.length):
            particle = unroller.fresh_particle(particle.key)
    return total


@pytest.mark.parametrize("reduction", ["mean", "final"])
def test_tbptt_equals_grad_of_unrolled_loss(reduction):
    task, opt = QuadraticTask(), LearnedMomentum()
    theta = opt.init_meta(None)
    num_particles, truncation = 3, 6
    unroller = make_unroller(
        task, opt, constant_length(4), MetaObjective(reduction=reduction, transform="log")
    )
    estimator = tbptt(num_particles, truncation, stagger=True)
    state = estimator.init(jax.random.PRNGKey(3), theta, unroller)
    grad, _, info = jax.jit(lambda t, s: estimator.estimate(t, s, unroller))(theta, state)
    assert int(info.num_episodes_ended) >= num_particles  # a reset inside every truncation

    def weights(t, ended):
        return 1.0 / truncation if reduction == "mean" else ended.astype(jnp.float32)

    def mean_objective(theta):
        particles = [
            jax.tree.map(lambda x, i=i: x[i], state.population) for i in range(num_particles)
        ]
        return sum(replay_objective(unroller, theta, p, truncation, weights) for p in particles)

    expected = jax.grad(mean_objective)(theta)
    for name in theta:
        np.testing.assert_allclose(grad[name], expected[name] / num_particles, rtol=2e-5)
    assert abs(float(grad["log_lr"])) > 1e-3  # the comparison is not between zeros


def test_half_cosine_measures_agreement_between_the_two_halves():
    from lopt.meta.base import first_half, tree_cosine

    assert float(tree_cosine({"a": jnp.ones(3)}, {"a": 2 * jnp.ones(3)})) == pytest.approx(1.0)
    assert float(tree_cosine({"a": jnp.asarray([1.0, 0])}, {"a": jnp.asarray([0, 1.0])})) == 0
    assert np.isnan(float(tree_cosine({"a": jnp.zeros(2)}, {"a": jnp.ones(2)})))
    assert first_half(5).tolist() == [True, True, False, False, False]
    task, opt = QuadraticTask(), LearnedMomentum()
    theta = opt.init_meta(None)
    unroller = make_unroller(task, opt, constant_length(8))
    cosines = {}
    for name, estimator in (("pes", pes(64, 4, 0.01)), ("tbptt", tbptt(64, 4))):
        state = estimator.init(jax.random.PRNGKey(0), theta, unroller)
        _, _, info = jax.jit(lambda t, s, e=estimator: e.estimate(t, s, unroller))(theta, state)
        cosines[name] = float(info.half_cosine)
    # On this two-parameter problem the signal dominates: halves of 32 particles (TBPTT,
    # exact gradients of staggered particles) or 32 pairs (PES) point the same way.
    assert cosines["tbptt"] > 0.5 and cosines["pes"] > 0.3, cosines
    assert np.isnan(
        float(
            pes(1, 4, 0.01)
            .estimate(
                theta, pes(1, 4, 0.01).init(jax.random.PRNGKey(0), theta, unroller), unroller
            )[2]
            .half_cosine
        )
    )
