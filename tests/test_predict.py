"""Weight-space predictors: invariance, Kendall τ, and training on a tiny zoo."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import lopt.nf as nf
from lopt.predict import (
    PREDICTORS,
    FitSettings,
    invariance_error,
    kendall_tau,
    make_predictor,
    run_prediction,
    symmetry_spec,
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


@functools.cache
def _small_problem(name):
    options = {"hidden_size": 5, "digits": 1} if name == "rnn_addition" else {"channels": (3, 4)}
    return make_problem(name, **options)


@pytest.mark.parametrize("problem_name", ["rnn_addition", "cnn_digits"])
@pytest.mark.parametrize("kind", PREDICTORS)
def test_predictors_are_invariant(problem_name, kind):
    problem = _small_problem(problem_name)
    params = jax.eval_shape(problem.init, jax.random.key(0))
    x = _random_features(problem.spec, params, jax.random.key(1))
    # one equivariant layer keeps the compile short; the pooling and head follow it
    module = make_predictor(kind, problem.spec, width=4, depth=1, head=(8, 1))
    variables = jax.jit(module.init)(jax.random.key(2), x)  # eager UNF init is slower
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
    # every network of the batch (x and its permutation) gets its own random permutation
    batch = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), x, permuted)
    assert invariance_error(module, variables, problem.spec, batch, jax.random.key(4)) < 1e-4


def test_hnp_predictor_is_invariant_to_hidden_neurons_only():
    problem = _small_problem("rnn_addition")
    params = jax.eval_shape(problem.init, jax.random.key(0))
    x = _random_features(problem.spec, params, jax.random.key(1))
    module = make_predictor("unf", problem.spec, width=4, depth=1, head=(8, 1), symmetry="hnp")
    variables = jax.jit(module.init)(jax.random.key(2), x)
    hidden = nf.symmetry_ids(problem.spec)
    by_choice = [i for i in nf.perm_ids(problem.spec) if not nf.is_symmetry(i)]
    assert hidden and by_choice
    assert nf.perm_ids(symmetry_spec(problem.spec, "hnp")) == hidden
    apply = jax.jit(module.apply)
    for ids, invariant in ((hidden, True), (by_choice, False)):
        perms = nf.random_permutations(jax.random.key(3), problem.spec, x, ids=ids)
        permuted = nf.permute(x, problem.spec, perms)
        change = float(jnp.max(jnp.abs(apply(variables, x) - apply(variables, permuted))))
        assert (change < 1e-4) == invariant, (ids, change)
    # the run's invariance check draws from the predictor's own group
    batch = jax.tree_util.tree_map(lambda a: a[None], x)
    assert invariance_error(module, variables, problem.spec, batch, jax.random.key(4)) < 1e-4


def test_unknown_symmetry_is_refused():
    with pytest.raises(ValueError, match="unknown symmetry 'full'"):
        make_predictor("unf", {}, symmetry="full")


def test_invariance_check_catches_a_non_invariant_predictor():
    problem = _small_problem("cnn_digits")
    params = jax.eval_shape(problem.init, jax.random.key(0))
    x = _random_features(problem.spec, params, jax.random.key(1))
    batch = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), x)
    # a Dense on the flattened weights sees the order of the entries

    class Flattened(nn.Module):
        @nn.compact
        def __call__(self, features):
            leaves = jax.tree_util.tree_leaves(features)
            return nn.Dense(1)(jnp.concatenate([leaf.ravel() for leaf in leaves]))

    module = Flattened()
    variables = module.init(jax.random.key(2), x)
    assert invariance_error(module, variables, problem.spec, batch, jax.random.key(3)) > 1e-3


def test_unknown_predictor_is_refused():
    with pytest.raises(ValueError, match="unknown predictor"):
        make_predictor("transformer", {})


ZOO_OVERRIDES = [
    "zoo=cnn",
    "zoo.count=96",
    "zoo.shard_size=48",
    "zoo.chunk_size=48",
    "zoo.options.channels=[3]",
    "zoo.ranges.steps=[2,40]",
    "zoo.ranges.batch_sizes=[8]",
    "progress=false",
    "compilation_cache.enabled=false",  # the tests' own cache is set up in conftest.py
]
PREDICT_OVERRIDES = [
    "zoo=cnn",
    "model=deepsets",
    "model.width=4",
    "model.head=[8,1]",
    "fit.batch_size=8",
    "fit.max_epochs=3",
    "split=[0.5,0.25,0.25]",
    "compilation_cache.enabled=false",
]


def _compose(config_name, overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture(scope="module")
def cli_zoo(tmp_path_factory):
    """A tiny CNN zoo made by the ``lopt-zoo`` app: its root, path override and summary."""
    import lopt.cli.zoo

    root = tmp_path_factory.mktemp("cli")
    zoo_path = f"zoo.path={root / 'zoo'}"
    summary = lopt.cli.zoo.run(_compose("zoo", [*ZOO_OVERRIDES, zoo_path]), root / "zoo_run")
    return root, zoo_path, summary


@pytest.mark.parametrize(("config", "groups"), [("zoo", "zoo: cnn, rnn"), ("predict", "model: ")])
def test_help_lists_the_config_groups(config, groups):
    from hydra import compose, initialize_config_module

    import lopt.cli.predict  # noqa: F401  (registers the resolver of --help)

    with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
        cfg = compose(config_name=config, return_hydra_config=True)
    assert groups in cfg.hydra.help.template


@pytest.mark.slow
def test_tiny_zoo_predictor_beats_a_constant(tmp_path):
    problem = make_problem("rnn_addition", hidden_size=8)
    ranges = HyperparameterRanges(steps=(1, 60), batch_sizes=(8, 16), learning_rate=(1e-3, 1e-1))
    settings = ZooSettings(count=120, shard_size=120, ranges=ranges)
    generate_zoo(tmp_path, problem, settings, seed=0, progress=False)
    zoo = load_zoo(tmp_path)
    targets = zoo.metrics["test_accuracy"]
    assert np.std(targets) > 0.03, "the tiny zoo's accuracies must spread"
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


@pytest.mark.slow
def test_zoo_and_predict_commands_write_their_results(cli_zoo, tmp_path):
    import lopt.cli.predict

    root, zoo_path, summary = cli_zoo
    assert summary["networks"] == 96
    assert set(summary["metrics"]) == {"test_accuracy", "test_loss"}
    assert summary["timing_this_run"]["networks_trained"] == 96
    assert summary["environment"]["cpus"] >= 1
    stored = json.loads((root / "zoo_run" / "summary.json").read_text())
    assert stored["metrics"]["test_accuracy"]["max"] >= stored["metrics"]["test_accuracy"]["min"]
    assert stored["zoo"] == "../zoo"  # relative to the run directory: no machine's paths

    cfg = _compose("predict", [*PREDICT_OVERRIDES, zoo_path])
    lopt.cli.predict.run(cfg, tmp_path / "predict_run")
    result = json.loads((tmp_path / "predict_run" / "result.json").read_text())
    assert result["model"] == "deepsets" and result["test_networks"] == 24
    assert (tmp_path / "predict_run" / result["zoo_path"]).resolve() == (root / "zoo").resolve()
    assert not Path(result["zoo_path"]).is_absolute()
    assert result["epochs_run"] <= 3 and result["invariance_error"] < 1e-4
    saved = np.load(tmp_path / "predict_run" / "predictions.npz")
    assert saved["predictions"].shape == saved["targets"].shape == (24,)

    # the results page is built from these files alone
    page = tmp_path / "docs" / "weight_space.md"
    script = Path(__file__).parents[1] / "scripts" / "weight_space_page.py"
    argv = ["--zoos", str(root / "zoo_run"), "--results", str(tmp_path), "--out", str(page)]
    subprocess.run([sys.executable, str(script), *argv], check=True, capture_output=True)
    text = page.read_text()
    assert "| cnn | Deep Sets |" in text and "96 networks" in text
    assert "by choice `output/axis1` (Dense_0/bias:0, Dense_0/kernel:1)" in text
    assert (tmp_path / "docs" / "weight_space" / "cnn_deepsets.png").stat().st_size > 1000

    missing = _compose("predict", [*PREDICT_OVERRIDES, "zoo.target=test_success", zoo_path])
    with pytest.raises(ValueError, match="no metric 'test_success'"):
        lopt.cli.predict.run(missing, tmp_path / "missing")


@pytest.mark.slow
def test_predict_sweeps_with_multirun(cli_zoo, tmp_path):
    _, zoo_path, _ = cli_zoo
    sweep = [o for o in PREDICT_OVERRIDES if not o.startswith("model=")]
    sweep += [
        "model=deepsets,statnn",
        "seed=0,1",
        zoo_path,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    subprocess.run(
        [sys.executable, "-m", "lopt.cli.predict", "-m", *sweep],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    results = sorted((tmp_path / "sweep").glob("cnn/*/result.json"))
    assert [path.parent.name for path in results] == [
        "deepsets_seed0",
        "deepsets_seed1",
        "statnn_seed0",
        "statnn_seed1",
    ]
