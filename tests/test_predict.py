"""Weight-space predictors: invariance, Kendall τ, and training on a tiny zoo."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import lopt.nf as nf
from lopt.predict import (
    PREDICTORS,
    FitSettings,
    kendall_tau,
    make_predictor,
    run_prediction,
)
from lopt.zoo import HyperparameterRanges, ZooSettings, generate_zoo, load_zoo, make_problem


@pytest.mark.parametrize("seed", [0, 1])
def test_kendall_tau_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=60)
    y = x + rng.normal(size=60)
    ties_x, ties_y = np.round(x), np.round(y * 2)  # many ties: τ-b's denominator matters
    for a, b in ((x, y), (ties_x, ties_y), (x, -y)):
        expected = scipy.stats.kendalltau(a, b).statistic
        np.testing.assert_allclose(
            float(kendall_tau(jnp.asarray(a), jnp.asarray(b))), expected, rtol=1e-5
        )


def _random_features(spec, params, key):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, (*p.shape, 1)) for k, p in zip(keys, leaves, strict=True)]
    )


@pytest.mark.parametrize("problem_name", ["rnn_addition", "cnn_digits"])
@pytest.mark.parametrize("kind", PREDICTORS)
def test_predictors_are_invariant(problem_name, kind):
    options = {"hidden_size": 5} if problem_name == "rnn_addition" else {"channels": (3, 4)}
    problem = make_problem(problem_name, **options)
    params = jax.eval_shape(problem.init, jax.random.key(0))
    x = _random_features(problem.spec, params, jax.random.key(1))
    module = make_predictor(kind, problem.spec, width=4, depth=2, head=(8, 1))
    variables = module.init(jax.random.key(2), x)
    # NFN treats conv spatial axes as channels: it is invariant to the other ids only
    spec = nf.nfn_spec(problem.spec) if kind == "nfn" else problem.spec
    perms = nf.random_permutations(jax.random.key(3), spec, x)
    assert perms, "the spec has ids to permute"
    permuted = nf.permute(x, problem.spec, perms)
    changed = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(permuted), strict=True
        )
    )
    assert changed > 0.1  # the permutation really moves entries
    out, out_permuted = module.apply(variables, x), module.apply(variables, permuted)
    np.testing.assert_allclose(out, out_permuted, rtol=1e-4, atol=1e-5)


def test_unknown_predictor_is_refused():
    with pytest.raises(ValueError, match="unknown predictor"):
        make_predictor("transformer", {})


def test_tiny_zoo_predictor_beats_a_constant(tmp_path):
    problem = make_problem("rnn_addition", hidden_size=8)
    ranges = HyperparameterRanges(steps=(1, 60), batch_sizes=(8, 16), learning_rate=(1e-3, 1e-1))
    generate_zoo(
        tmp_path,
        problem,
        ZooSettings(count=120, shard_size=120, ranges=ranges),
        seed=0,
        progress=False,
    )
    zoo = load_zoo(tmp_path)
    targets = zoo.metrics["test_accuracy"]
    assert np.std(targets) > 0.05, "the tiny zoo's accuracies must spread"
    result = run_prediction(
        zoo.params,
        zoo.spec,
        targets,
        "statnn",
        seed=0,
        split_fractions=(0.5, 0.2, 0.3),
        model_options={"head": (32, 1)},
        settings=FitSettings(batch_size=16, max_epochs=40),
    )
    # a constant predictor has τ = NaN (no untied pairs); chance is τ ≈ 0
    constant = float(
        kendall_tau(jnp.zeros_like(jnp.asarray(result.targets)), jnp.asarray(result.targets))
    )
    assert np.isnan(constant)
    assert result.tau > 0.3
