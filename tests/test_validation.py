"""Meta-validation: what it measures, its seeds, best-theta selection, divergence handling,
and that a short meta-training improves it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.evaluation import runner, stats
from lopt.evaluation.seeds import (
    EVAL_SEED_OFFSET,
    TUNING_SEED_OFFSET,
    evaluation_seeds,
    seed_keys,
    tuning_seeds,
    validation_seeds,
)
from lopt.evaluation.sweep import tune_interior
from lopt.evaluation.validation import (
    METRICS,
    Reference,
    ValidationScores,
    ValidationSettings,
    make_validator,
    reference_scores,
)
from lopt.learned import make_optimizer
from lopt.meta import MetaObjective, default_outer_optimizer, make_meta_trainer, pes
from lopt.meta.population import make_unroller
from lopt.run import fresh_run_state, keep_best
from lopt.tasks import get_task


@pytest.fixture(scope="module")
def task():
    return get_task("mlp_digits", width=8, batch_size=16)


def test_validation_equals_a_plain_evaluation_of_the_same_theta(task):
    opt = make_optimizer("sgdm", task.spec, learning_rate=0.05)
    theta = opt.init_meta(jax.random.key(0))
    settings = ValidationSettings(num_seeds=3, num_steps=40, num_test_batches=2)
    scores = make_validator(task, opt, settings)(theta)
    plain = runner.run_seeds(task, opt, theta, seed_keys(settings.seeds), 40, num_test_batches=2)
    np.testing.assert_allclose(
        scores.final_loss, stats.final_loss(plain.train_loss, settings.tail), rtol=1e-12
    )
    np.testing.assert_allclose(scores.mean_loss, plain.train_loss.mean(axis=1), rtol=1e-12)
    # Validation's held-out loss is on the valid split, the evaluation's on test.
    valid = runner.run_seeds(
        task, opt, theta, seed_keys(settings.seeds), 40, num_test_batches=2, held_out_split="valid"
    )
    np.testing.assert_allclose(scores.valid_loss, valid.test_metrics["loss"], rtol=1e-12)
    assert not np.allclose(scores.valid_loss, plain.test_metrics["loss"])
    summary = scores.summary()
    assert summary["final_loss"] == pytest.approx(scores.final_loss.mean())
    assert summary["final_loss_se"] == pytest.approx(scores.final_loss.std(ddof=1) / math.sqrt(3))
    geometric = math.exp(np.log(scores.final_loss).mean())
    assert summary["final_loss_gmean"] == pytest.approx(geometric, rel=1e-9)
    assert scores.score() == scores.score("final_loss") == summary["final_loss_gmean"]
    assert scores.score("valid_loss") == pytest.approx(scores.valid_loss.mean())


def test_validation_seeds_are_disjoint_from_every_other_run(task):
    seeds = set(validation_seeds(64))
    assert seeds.isdisjoint(evaluation_seeds(64)) and seeds.isdisjoint(tuning_seeds(64))
    assert min(seeds) > max(range(EVAL_SEED_OFFSET)) and min(seeds) > TUNING_SEED_OFFSET + 64
    with pytest.raises(ValueError, match="validation seeds must start at 30000"):
        validation_seeds(4, offset=TUNING_SEED_OFFSET)
    # No inner run of meta-training starts from a validation run's keys.
    opt = make_optimizer("sgdm", task.spec)
    trainer = make_meta_trainer(task, opt, pes(4, 5, 0.01), schedule=20)
    population = trainer.init(jax.random.key(0)).estimator_state.population
    roots = {tuple(k) for k in np.asarray(seed_keys(sorted(seeds)))}
    derived = {
        tuple(np.asarray(jax.random.key_data(jax.random.split(jax.random.wrap_key_data(k), 3)[i])))
        for k in seed_keys(sorted(seeds))
        for i in range(3)
    }
    used = {tuple(k) for k in np.asarray(population.data_key)}
    used |= {tuple(k) for k in np.asarray(population.key)}
    assert used.isdisjoint(roots | derived)


def test_best_theta_is_the_one_with_the_lowest_score(task):
    opt = make_optimizer("sgdm", task.spec)
    trainer = make_meta_trainer(task, opt, pes(2, 5, 0.01), schedule=20)
    state = fresh_run_state(trainer.init(jax.random.key(0)))
    state = state._replace(best_score=jnp.asarray(0.5, jnp.float32))  # theta0's score
    best_at = {}
    for step, score in [(10, 0.7), (20, 0.4), (30, 0.45), (40, 0.4), (50, math.inf), (60, 0.3)]:
        theta = {k: v + step for k, v in state.meta.theta.items()}
        state = state._replace(meta=state.meta._replace(theta=theta))
        state = keep_best(state, ValidationScores(*(np.full(2, score),) * 3), step, "final_loss")
        best_at[step] = int(state.best_step)
    # Strict improvement only: a tie (step 40) and a diverged theta (step 50) do not count.
    assert best_at == {10: 0, 20: 20, 30: 20, 40: 20, 50: 20, 60: 60}
    assert float(state.best_score) == pytest.approx(0.3)
    np.testing.assert_array_equal(
        state.best_theta["log_learning_rate"], state.meta.theta["log_learning_rate"]
    )


def test_selection_metric_decides_which_theta_is_best(task):
    """A theta that drives training loss to float32 zero but generalises worse wins on the
    final-loss metric (floored in log space, so the zero counts as 1e-8, not -inf) and loses
    on the held-out one."""
    opt = make_optimizer("sgdm", task.spec)
    trainer = make_meta_trainer(task, opt, pes(2, 5, 0.01), schedule=20)
    overfit = ValidationScores(np.array([0.0, 1e-3]), np.ones(2), np.array([0.6, 0.5]))
    sound = ValidationScores(np.array([0.02, 0.03]), np.ones(2), np.array([0.2, 0.25]))
    assert overfit.score() == pytest.approx(math.sqrt(1e-8 * 1e-3))
    chosen = {}
    for metric in METRICS:
        state = fresh_run_state(trainer.init(jax.random.key(0)))
        state = keep_best(state, sound, 10, metric)
        state = keep_best(state, overfit, 20, metric)
        chosen[metric] = int(state.best_step)
    assert chosen == {"final_loss": 20, "valid_loss": 10}
    with pytest.raises(ValueError, match="validation metric must be one of"):
        ValidationSettings(metric="test_loss")


def test_a_seed_that_diverges_makes_the_score_infinite():
    scores = ValidationScores(np.array([0.1, np.inf]), np.array([1.0, 2.0]), np.array([0.1, 0.2]))
    assert scores.score() == math.inf and scores.summary()["final_loss"] == math.inf
    assert ValidationScores.from_json(scores.to_json()).score() == math.inf
    valid_nan = ValidationScores(np.array([0.1, 0.2]), np.ones(2), np.array([0.1, np.nan]))
    assert valid_nan.score("valid_loss") == math.inf and math.isfinite(valid_nan.score())


@pytest.mark.slow  # a whole sweep; CI runs it
def test_reference_adam_comes_from_the_sweep_on_the_validation_runs(task):
    settings = ValidationSettings(
        num_seeds=2, num_steps=30, num_test_batches=2, adam_learning_rates=(1e-3, 1e-2, 0.1)
    )
    opt = make_optimizer("sgdm", task.spec, learning_rate=0.01)
    validator = make_validator(task, opt, settings)
    reference = reference_scores(task, validator, opt.init_meta(jax.random.key(0)), settings)
    assert reference.adam_learning_rate in reference.adam_grid
    best = reference.adam_grid.index(reference.adam_learning_rate)
    assert 0 < best < len(reference.adam_grid) - 1  # tuned to an interior rate
    assert reference.adam.score() == pytest.approx(reference.adam_grid_scores[best], rel=1e-12)
    # The sweep's runs are exactly what validating Adam at that rate gives.
    adam = make_optimizer("adam", task.spec, learning_rate=reference.adam_learning_rate)
    direct = make_validator(task, adam, settings)(adam.init_meta(jax.random.key(0)))
    np.testing.assert_allclose(direct.final_loss, reference.adam.final_loss, rtol=1e-6)
    np.testing.assert_allclose(direct.valid_loss, reference.adam.valid_loss, rtol=1e-6)
    restored = Reference.from_json(reference.to_json())
    assert restored.ratios(0.5) == reference.ratios(0.5)


@pytest.mark.slow  # several whole sweeps; CI runs it
def test_grid_is_extended_until_the_best_rate_is_interior(task):
    sweep = tune_interior(task, "adam", [3e-3, 1e-2], seeds=(30_000,), num_steps=30)
    assert not sweep.at_grid_edge
    assert len(sweep.learning_rates) > 2 and sweep.learning_rates[0] == 3e-3


def test_an_exploding_but_finite_particle_counts_as_diverged(task):
    objective = MetaObjective(max_loss=10 * task.chance_loss, clip=5.0)
    assert bool(objective.diverged(jnp.asarray(1e28))) and not bool(objective.diverged(2.0))
    assert bool(objective.diverged(jnp.asarray(jnp.nan)))
    assert float(objective.step_value(jnp.asarray(jnp.nan))) == 5.0  # NaN is the worst value
    opt = make_optimizer("sgdm", task.spec, learning_rate=0.1)
    unroller = make_unroller(task, opt, 50, objective)
    population = unroller.init_population(jax.random.key(0), 2, 1, stagger=False)
    theta = opt.init_meta(jax.random.key(0))
    huge = {**theta, "log_learning_rate": jnp.log(jnp.asarray(1e6, jnp.float32))}
    thetas = jax.tree.map(lambda a, b: jnp.stack([a, b]), theta, huge)
    _, record = unroller.unroll(thetas, population, 5, group_size=1)
    assert record.finite[:, 0].all()  # the sane particle
    loss = np.asarray(record.loss[:, 1])
    exploding = np.isfinite(loss) & (loss > objective.max_loss)
    assert exploding.any()  # finite, yet caught: masked and reset like a non-finite loss
    assert not np.asarray(record.finite[:, 1])[exploding].any()
    assert np.asarray(record.reset[:, 1])[exploding].all()


@pytest.mark.slow  # meta-trains until validation improves; CI runs it
def test_short_meta_training_improves_validation_over_theta0(task):
    """SGDM started at a far too small rate: a few outer steps of PES must raise it."""
    opt = make_optimizer("sgdm", task.spec, learning_rate=1e-3)
    trainer = make_meta_trainer(
        task,
        opt,
        pes(4, 10, 0.05),
        default_outer_optimizer(learning_rate=0.1, warmup_steps=0),
        schedule=40,
        objective={"transform": "log"},
    )
    state = trainer.init(jax.random.key(0))
    validate = make_validator(task, opt, ValidationSettings(num_seeds=3, num_steps=40))
    before = validate(state.theta)
    for _ in range(20):
        state, _ = trainer.step(state)
    after = validate(state.theta)
    paired = before.final_loss - after.final_loss
    assert paired.mean() > 5 * stats.standard_error(paired) and after.score() < before.score()
