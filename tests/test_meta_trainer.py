"""The outer loop: learning, robustness to diverging particles, resume, sharding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_meta_problems import LearnedMomentum, QuadraticTask, expected_losses

from lopt.meta import (
    EstimateInfo,
    Estimator,
    full_es,
    make_meta_trainer,
    meta_train,
    pes,
    tbptt,
)

EPISODE = 20


def exact_episode_loss(task, theta):
    steps = jnp.ones(EPISODE)
    return float(expected_losses(task, theta["log_lr"] * steps, theta["momentum"] * steps).mean())


@pytest.mark.parametrize(
    "estimator",
    [pes(8, 5, 0.1), tbptt(8, 5), full_es(8, 0.1)],
    ids=["pes", "tbptt", "full_es"],
)
def test_meta_training_lowers_the_exact_objective(estimator):
    task = QuadraticTask()
    opt = LearnedMomentum(log_lr=float(np.log(0.02)), momentum=0.0)
    trainer = make_meta_trainer(task, opt, estimator, optax.adam(0.05), schedule=EPISODE)
    state = trainer.init(jax.random.PRNGKey(0))
    before = exact_episode_loss(task, state.theta)
    state, history = meta_train(trainer, state, 40, log_every=20)
    after = exact_episode_loss(task, state.theta)
    assert after < 0.7 * before, (before, after, state.theta)
    assert int(state.step) == 40 and len(history) == 3
    assert history[-1]["inner_steps_per_sec"] > 0
    assert all(h["skipped"] == 0 and h["num_nonfinite"] == 0 for h in history)


def test_diverging_pairs_are_masked_counted_and_reset():
    task = QuadraticTask()
    # Step size at the heavy-ball stability edge: large perturbations blow up one member.
    opt = LearnedMomentum(log_lr=float(np.log(1.5)), momentum=0.5)
    num_pairs = 8
    trainer = make_meta_trainer(task, opt, pes(num_pairs, 64, 0.5, stagger=False), schedule=200)
    state = trainer.init(jax.random.PRNGKey(0))
    state, metrics = trainer.step(state)
    assert 0 < int(metrics["num_nonfinite"]) < num_pairs
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["grad_norm"]))
    population = state.estimator_state.population
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(population.params))
    # The masked pairs started over: their step counters are behind the others'.
    assert int((population.step < 64).sum()) == 2 * int(metrics["num_nonfinite"])
    for _ in range(3):
        state, metrics = trainer.step(state)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.theta))


def test_tbptt_masks_particles_whose_loss_overflows():
    task = QuadraticTask(blowup_fraction=0.3)
    trainer = make_meta_trainer(task, LearnedMomentum(), tbptt(16, 4), schedule=10)
    state = trainer.init(jax.random.PRNGKey(1))
    state, metrics = trainer.step(state)
    assert 0 < int(metrics["num_nonfinite"]) < 16
    assert int(metrics["skipped"]) == 0 and float(metrics["grad_norm"]) > 0
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.theta))


def test_non_finite_estimate_leaves_theta_unchanged():
    def init(key, theta, unroller):
        return jnp.zeros((), jnp.int32)

    def estimate(theta, state, unroller):
        grad = jax.tree.map(lambda t: jnp.where(state % 2 == 0, jnp.nan, 1.0) * t, theta)
        info = EstimateInfo(*(jnp.zeros(()),) * 2, *(jnp.zeros((), jnp.int32),) * 2)
        return grad, state + 1, info

    poisoned = Estimator(init, estimate, lambda u: 0, (), {"name": "poisoned"})
    trainer = make_meta_trainer(QuadraticTask(), LearnedMomentum(), poisoned, schedule=5)
    start = trainer.init(jax.random.PRNGKey(0))
    state, metrics = trainer.step(start)
    assert int(metrics["skipped"]) == 1
    jax.tree.map(np.testing.assert_array_equal, state.theta, start.theta)
    state, metrics = trainer.step(state)  # a finite estimate goes through again
    assert int(metrics["skipped"]) == 0
    assert not np.array_equal(state.theta["log_lr"], start.theta["log_lr"])


def test_resume_from_host_copy_is_bit_for_bit():
    trainer = make_meta_trainer(QuadraticTask(), LearnedMomentum(), pes(4, 3, 0.1), schedule=7)
    state = trainer.init(jax.random.PRNGKey(5))
    straight = state
    for _ in range(4):
        straight, straight_metrics = trainer.step(straight)
    for _ in range(2):
        state, _ = trainer.step(state)
    saved = jax.device_get(state)  # numpy leaves only: what a checkpoint holds
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(saved))
    state = jax.tree.map(jnp.asarray, saved)
    for _ in range(2):
        state, metrics = trainer.step(state)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(straight))
    jax.tree.map(np.testing.assert_array_equal, metrics, straight_metrics)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_pairs"):
        pes(0, 5, 0.1)
    with pytest.raises(ValueError, match="sigma"):
        pes(2, 5, -1.0)
    with pytest.raises(ValueError, match="truncation_length"):
        tbptt(2, 0)
    with pytest.raises(TypeError, match="Estimator"):
        make_meta_trainer(QuadraticTask(), LearnedMomentum(), "pes", schedule=5)


SHARDED_RUN = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import PartitionSpec
    from test_meta_problems import LearnedMomentum, QuadraticTask
    from lopt.meta import make_meta_trainer, pes, tbptt

    assert len(jax.devices()) == 2, jax.devices()
    mesh = jax.make_mesh((2,), ("particles",))
    for estimator in (pes(4, 3, 0.1), tbptt(4, 3)):
        results = []
        for use_mesh in (None, mesh):
            trainer = make_meta_trainer(
                QuadraticTask(), LearnedMomentum(), estimator, schedule=5, mesh=use_mesh
            )
            state = trainer.init(jax.random.PRNGKey(0))
            for _ in range(3):
                state, metrics = trainer.step(state)
            results.append((state, metrics))
        (plain, plain_metrics), (sharded, sharded_metrics) = results
        params = sharded.estimator_state.population.params["w"]
        assert params.sharding.spec == PartitionSpec("particles"), params.sharding
        assert {s.data.shape[0] for s in params.addressable_shards} == {params.shape[0] // 2}
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
        for name in plain_metrics:
            np.testing.assert_allclose(plain_metrics[name], sharded_metrics[name], rtol=1e-5)
    print("SHARDED_OK")
    """
)


@pytest.mark.slow  # tests/test_distributed.py checks 4 devices against 1 by default
def test_sharded_population_matches_unsharded():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_RUN],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SHARDED_OK" in result.stdout


def test_a_task_family_steps_on_the_mean_of_its_members_estimates():
    members = [QuadraticTask(), QuadraticTask(curvature=(0.1, 0.3, 1.0, 3.0, 0.7, 1.5))]
    opt = LearnedMomentum(log_lr=float(np.log(0.05)), momentum=0.2)
    estimator = pes(2, 5, 0.1)
    # Plain SGD at rate 1: theta moves by minus the estimate, so steps compare linearly.
    family = make_meta_trainer(members, opt, estimator, optax.sgd(1.0), schedule=EPISODE)
    state = family.init(jax.random.PRNGKey(0))
    assert isinstance(state.estimator_state, tuple) and len(state.estimator_state) == 2
    assert (
        family.inner_steps_per_step
        == 2 * make_meta_trainer(members[0], opt, estimator, schedule=EPISODE).inner_steps_per_step
    )
    assert family.config["task"] == ["quadratic", "quadratic"]
    stepped, metrics = family.step(state)
    singles = []
    for member, member_state in zip(members, state.estimator_state, strict=True):
        single = make_meta_trainer(member, opt, estimator, optax.sgd(1.0), schedule=EPISODE)
        alone = single.init(jax.random.PRNGKey(0))._replace(estimator_state=member_state)
        singles.append(single.step(alone))
    for name in ("log_lr", "momentum"):
        mean = np.mean([np.asarray(s[0].theta[name]) for s in singles])
        np.testing.assert_allclose(np.asarray(stepped.theta[name]), mean, rtol=1e-5, atol=1e-7)
    assert int(metrics["num_episodes_ended"]) == sum(
        int(s[1]["num_episodes_ended"]) for s in singles
    )
    np.testing.assert_allclose(
        float(metrics["meta_loss"]), np.mean([float(s[1]["meta_loss"]) for s in singles]), rtol=1e-5
    )
    # Each member keeps advancing its own population.
    for after, (single_state, _) in zip(stepped.estimator_state, singles, strict=True):
        expected = jax.tree.leaves(single_state.estimator_state)
        for a, b in zip(jax.tree.leaves(after), expected, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_family_of_widths_shares_one_theta_and_other_architectures_are_refused():
    import lopt
    import lopt.tasks

    narrow, wide = (lopt.tasks.get_task("mlp_digits", width=w) for w in (16, 48))
    opt = lopt.make_optimizer("unf", narrow.spec, hidden=4, depth=1)
    trainer = make_meta_trainer([narrow, wide], opt, pes(1, 2, 0.1), schedule=4)
    assert trainer.config["task"] == ["mlp_digits", "mlp_digits"]
    cnn = lopt.tasks.get_task("cnn_digits")
    with pytest.raises(
        ValueError, match=r"task family member 1 \(cnn_digits\) does not fit the learned optimizer"
    ):
        make_meta_trainer([narrow, cnn], opt, pes(1, 2, 0.1), schedule=4)
    with pytest.raises(ValueError, match="at least one task"):
        make_meta_trainer([], opt, pes(1, 2, 0.1), schedule=4)


class PerCoordinateRate(LearnedMomentum):
    """A rule with one step size per coordinate: its theta depends on the task's size."""

    @property
    def spec(self):
        return {"w": (None,)}

    def init_meta(self, key, params=None):
        del key
        return {"log_lr": jnp.zeros(params["w"].shape), "momentum": jnp.asarray(0.5)}


def test_family_members_that_need_another_theta_are_named():
    members = [QuadraticTask(), QuadraticTask(curvature=(1.0, 2.0))]
    with pytest.raises(ValueError, match=r"task family member 1 \(quadratic\) needs another"):
        make_meta_trainer(members, PerCoordinateRate(), pes(1, 2, 0.1), schedule=4)
