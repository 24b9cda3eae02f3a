"""Short meta-training of the learned optimizers on the small MLP task."""

from __future__ import annotations

import jax
import optax
import pytest

from lopt.learned import make_optimizer
from lopt.meta import full_es, make_meta_trainer, meta_train, pes, tbptt
from lopt.meta.base import broadcast_theta
from lopt.tasks import get_task

EPISODE = 50


def held_out_seed_loss(unroller, theta, num_runs=8):
    """Mean training loss over whole episodes from fixed, unseen initialisations and data."""
    population = unroller.init_population(jax.random.PRNGKey(99), num_runs, 1, False)
    _, record = unroller.unroll(broadcast_theta(theta, num_runs), population, EPISODE, reset=False)
    return record.loss.mean()


def meta_train_and_evaluate(optimizer, estimator, num_steps):
    task = get_task("mlp_digits", width=8, batch_size=32)
    opt = make_optimizer(optimizer, task.spec, hidden=8, depth=1)
    trainer = make_meta_trainer(task, opt, estimator, optax.adam(0.01), schedule=EPISODE)
    evaluate = jax.jit(lambda theta: held_out_seed_loss(trainer.unroller, theta))
    state = trainer.init(jax.random.PRNGKey(0))
    before = float(evaluate(state.theta))
    state, history = meta_train(trainer, state, num_steps, log_every=num_steps)
    assert all(h["skipped"] == 0 for h in history)
    return before, float(evaluate(state.theta))


# UNF is also meta-trained by test_longer_meta_training_lowers_the_loss (slow, in CI).
@pytest.mark.parametrize("optimizer", ["deepsets", pytest.param("unf", marks=pytest.mark.slow)])
def test_pes_meta_training_lowers_the_loss(optimizer):
    before, after = meta_train_and_evaluate(optimizer, pes(4, 10, 0.01), 25)
    assert after < before - 0.03, (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["deepsets", "unf", "nfn"])
@pytest.mark.parametrize(
    "estimator",
    [pes(8, 10, 0.01), tbptt(8, 10), full_es(4, 0.01)],
    ids=["pes", "tbptt", "full_es"],
)
def test_longer_meta_training_lowers_the_loss(optimizer, estimator):
    before, after = meta_train_and_evaluate(optimizer, estimator, 100)
    assert after < before - 0.1, (before, after)
