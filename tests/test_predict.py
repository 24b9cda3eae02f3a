"""Weight-space predictors: invariance, Kendall τ, the statistics, training on a tiny zoo,
the hyperparameter baseline, and saving, loading and scoring a fitted predictor."""

from __future__ import annotations

import dataclasses
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
from nf_testing import random_variables
from omegaconf import OmegaConf

import lopt.nf as nf
from lopt.predict import (
    PREDICTORS,
    WEIGHTLESS,
    FitSettings,
    FittedPredictor,
    SavedPredictorError,
    TargetScale,
    WeightSpaceError,
    fit_hyperparameter_scaler,
    fit_standardizer,
    hyperparameter_features,
    invariance_error,
    kendall_tau,
    load_predictor,
    make_predictor,
    mean_absolute_error,
    paired_bootstrap,
    predict,
    r_squared,
    read_network_file,
    readable_networks,
    run_prediction,
    save_predictor,
    symmetry_spec,
    weight_features,
    weighted_kendall_tau,
    weighted_mean_absolute_error,
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


def test_r_squared_and_mean_absolute_error_match_numpy():
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    p = y + rng.normal(scale=0.5, size=50)
    expected_r2 = 1 - np.sum((y - p) ** 2) / np.sum((y - np.mean(y)) ** 2)
    np.testing.assert_allclose(r_squared(p, y), expected_r2, rtol=1e-12)
    np.testing.assert_allclose(mean_absolute_error(p, y), np.mean(np.abs(y - p)), rtol=1e-12)
    assert r_squared(y, y) == 1.0 and np.isnan(r_squared(p, np.ones(50)))
    with pytest.raises(ValueError, match="one length"):
        r_squared(p, y[:3])


def test_weighted_tau_is_tau_of_the_resampled_networks():
    rng = np.random.default_rng(1)
    x, y = np.round(rng.normal(size=15), 1), np.round(rng.normal(size=15), 1)
    draws = rng.integers(0, 15, size=(6, 15))
    counts = np.stack([np.bincount(d, minlength=15) for d in draws])
    taus = weighted_kendall_tau(x, y, counts)
    for draw, tau in zip(draws, taus, strict=True):
        np.testing.assert_allclose(tau, scipy.stats.kendalltau(x[draw], y[draw]).statistic)
    np.testing.assert_allclose(
        weighted_mean_absolute_error(x, y, counts),
        [np.mean(np.abs(x[d] - y[d])) for d in draws],
    )


def test_bootstrap_interval_of_a_hand_computed_case():
    # errors 1, 1, 1, 4 against 1, 1, 1, 1: the resampled difference of mean absolute errors
    # is 3k/4 with k ~ Binomial(4, 1/4) copies of the last network. P(k = 0) = 0.316 sets
    # the 2.5% point to 0; P(k <= 2) = 0.949 < 0.975 <= P(k <= 3) = 0.996 sets the 97.5%
    # point to 9/4. The observed difference is 3/4.
    targets = [np.zeros(4)]
    first, second = [np.array([[1.0, 1.0, 1.0, 4.0]])], [np.ones((1, 4))]
    interval = paired_bootstrap(
        first, second, targets, metric=weighted_mean_absolute_error, resamples=4000, seed=0
    )
    assert (interval.estimate, interval.low, interval.high) == (0.75, 0.0, 2.25)
    assert interval.resamples == 4000 and interval.verdict == "undecided"


def test_bootstrap_resamples_the_splits_too():
    # split 0: τ 1 against -1 (difference 2 on every resample of its networks); split 1:
    # both τ 1 (difference 0). Drawing two splits with replacement gives a mean difference
    # of 0, 1 or 2 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 2].
    y = np.arange(12.0)
    first = [np.stack([y, y]), y[None]]  # two seeds on split 0, one on split 1
    second = [-y[None], y[None]]
    interval = paired_bootstrap(first, second, [y, y], resamples=2000, seed=3)
    assert (interval.estimate, interval.low, interval.high) == (1.0, 0.0, 2.0)
    shifted = paired_bootstrap(first, [-y[None], -y[None]], [y, y], resamples=500)
    assert (shifted.low, shifted.high, shifted.verdict) == (2.0, 2.0, "holds")
    assert paired_bootstrap(second, first, [y, y], resamples=500).verdict == "undecided"
    with pytest.raises(ValueError, match="same splits"):
        paired_bootstrap(first, second[:1], [y, y])


def test_unreadable_networks_are_dropped_and_counted():
    params = {"w": np.ones((5, 2, 3)), "b": np.zeros((5, 3))}
    params["w"][1, 0, 0] = np.nan
    params["b"][2, 1] = np.inf
    targets = np.array([0.1, 0.2, 0.3, np.nan, 0.5])
    keep, dropped = readable_networks(params, targets)
    assert keep.tolist() == [True, False, False, False, True]
    assert (dropped.non_finite_weights, dropped.non_finite_target) == (2, 1)


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
@pytest.mark.parametrize("kind", [k for k in PREDICTORS if k not in WEIGHTLESS])
def test_predictors_are_invariant(problem_name, kind):
    problem = _small_problem(problem_name)
    params = jax.eval_shape(problem.init, jax.random.key(0))
    x = _random_features(problem.spec, params, jax.random.key(1))
    # one equivariant layer keeps the compile short; the pooling and head follow it
    module = make_predictor(kind, problem.spec, width=4, depth=1, head=(8, 1))
    variables = random_variables(module, 2, x)
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
    variables = random_variables(module, 2, x)
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


@functools.cache
def _synthetic_zoo(count=48):
    """Randomly initialised small GRU adders, each scaled by its ``init_scale``; the target
    is the log of that scale plus noise: visible in the weights and in the hyperparameters."""
    problem = _small_problem("rnn_addition")
    rng = np.random.default_rng(0)
    scales = np.exp(rng.uniform(-1.0, 1.0, size=count))
    shapes = jax.eval_shape(problem.init, jax.random.key(0))
    params = jax.tree_util.tree_map(
        lambda s: (
            rng.normal(size=(count, *s.shape)) * scales.reshape(-1, *[1] * len(s.shape))
        ).astype(np.float32),
        shapes,
    )
    hyper = {"init_scale": scales, "batch_size": rng.choice([8, 16], size=count)}
    targets = np.log(scales) + rng.normal(scale=0.1, size=count)
    return problem, params, hyper, targets


FAST = FitSettings(batch_size=8, max_epochs=3, patience=3, learning_rate=3e-3)
SMALL = {"width": 4, "depth": 1, "head": (8, 1)}


def test_hyperparameter_baseline_reads_no_weights():
    problem, params, hyper, targets = _synthetic_zoo()
    result = run_prediction(
        params, problem.spec, targets, "hyperparameters", seed=0, hyperparameters=hyper,
        split_fractions=(0.5, 0.25, 0.25), model_options={"head": (16, 1)},
        settings=FitSettings(batch_size=8, max_epochs=30, patience=30, learning_rate=1e-2),
    )  # fmt: skip
    assert result.invariance_error is None and result.kept == 48
    assert result.tau > 0.5 and result.r_squared > 0.3  # the scale is in init_scale
    assert result.predictor.inputs.names == ("batch_size", "init_scale")
    with pytest.raises(ValueError, match="reads the zoo's hyperparameters"):
        run_prediction(params, problem.spec, targets, "hyperparameters", seed=0)


def _untrained(kind, problem, params, hyper):
    """A predictor of random variables with its scalers fitted to the synthetic zoo."""
    if kind in WEIGHTLESS:
        spec, scaler = None, fit_hyperparameter_scaler(hyper)
        one = hyperparameter_features(hyper, scaler)[0]
    else:
        spec, scaler = problem.spec, fit_standardizer(params)
        one = jax.tree_util.tree_map(lambda x: x[0], weight_features(params, scaler))
    module = make_predictor(kind, spec, **SMALL)
    variables = jax.jit(module.init)(jax.random.key(2), one)
    return FittedPredictor(kind, SMALL, spec, variables, scaler, TargetScale(0.3, 2.0))


@pytest.mark.parametrize("kind", PREDICTORS)
def test_saved_predictor_scores_bit_for_bit(kind, tmp_path):
    problem, params, hyper, _ = _synthetic_zoo()
    fitted = _untrained(kind, problem, params, hyper)
    networks = hyper if kind in WEIGHTLESS else params
    expected = predict(fitted, networks)
    example = jax.tree_util.tree_map(lambda w: w[0], params)
    save_predictor(
        tmp_path / "p", fitted, target_name="log_scale", example=example, provenance={"n": 1}
    )
    loaded = load_predictor(tmp_path / "p")
    assert loaded.target_name == "log_scale" and loaded.provenance == {"n": 1}
    np.testing.assert_array_equal(loaded.score(networks), expected)
    if kind in WEIGHTLESS:
        return
    # one network, from a file, with the model's own derived spec
    flat = {"/".join(k.key for k in path): np.asarray(w) for path, w in _flat(example)}
    np.savez(tmp_path / "net.npz", **flat)
    one = loaded.score(read_network_file(tmp_path / "net.npz"), spec=problem.spec)
    np.testing.assert_allclose(one, expected[:1], rtol=1e-5, atol=1e-6)
    # a changed state file is refused as corrupt
    state = tmp_path / "p" / "state.msgpack"
    data = state.read_bytes()
    state.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SavedPredictorError, match="corrupt"):
        load_predictor(tmp_path / "p")


def _flat(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def test_another_weight_space_is_refused(tmp_path):
    problem, params, hyper, _ = _synthetic_zoo()
    example = jax.tree_util.tree_map(lambda w: w[0], params)
    fitted = _untrained("statnn", problem, params, hyper)
    save_predictor(tmp_path / "p", fitted, target_name="t", example=example)
    loaded = load_predictor(tmp_path / "p")
    wider = make_problem("rnn_addition", hidden_size=6, digits=1)
    with pytest.raises(WeightSpaceError, match=r"\['gru'\]\['hn'\]\['bias'\] has shape \(6,\)"):
        loaded.score(wider.init(jax.random.key(0)))
    missing = {**example, "readout": {"kernel": example["readout"]["kernel"]}}
    with pytest.raises(WeightSpaceError, match=r"missing \[\"\['readout'\]\['bias'\]\"\]"):
        loaded.score(missing)
    # same tensors, but the model says the readout's classes are a hidden layer
    spec = jax.tree_util.tree_map(lambda axes: axes, problem.spec, is_leaf=nf.is_axes)
    spec["readout"]["bias"] = ("classes",)
    spec["readout"]["kernel"] = (spec["readout"]["kernel"][0], "classes")
    with pytest.raises(WeightSpaceError, match=r"\['readout'\]\['bias'\]: axes \(hidden"):
        loaded.score(example, spec=spec)


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


def test_the_predict_config_fits_with_the_library_settings():
    # configs/predict.yaml lists the fit settings for the record; they are FitSettings'.
    fit = OmegaConf.to_container(_compose("predict", []).fit)
    assert fit == dataclasses.asdict(FitSettings())


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
        settings=FitSettings(batch_size=16, max_epochs=40, learning_rate=1e-3),
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
    run_dir = tmp_path / "predict_run"
    lopt.cli.predict.run(cfg, run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["model"] == "deepsets_per_tensor" and result["test_networks"] == 24
    assert (run_dir / result["zoo_path"]).resolve() == (root / "zoo").resolve()
    assert not Path(result["zoo_path"]).is_absolute()
    assert result["epochs_run"] <= 3 and result["invariance_error"] < 1e-4
    assert result["networks_dropped"] == {"non_finite_weights": 0, "non_finite_target": 0}
    assert result["split_seed"] == 0 and -1 <= result["kendall_tau"] <= 1
    assert result["r_squared"] <= 1 and result["mean_absolute_error"] >= 0
    saved = np.load(run_dir / "predictions.npz")
    assert saved["predictions"].shape == saved["targets"].shape == (24,)

    # the saved predictor scores the zoo's test networks exactly as the run did
    zoo = load_zoo(root / "zoo")
    test = jax.tree_util.tree_map(lambda w: w[saved["test_indices"]], zoo.params)
    predictor = load_predictor(run_dir / "predictor")
    np.testing.assert_array_equal(predictor.score(test), saved["predictions"])
    np.testing.assert_array_equal(
        zoo.metrics["test_accuracy"][saved["test_indices"]], saved["targets"]
    )
    # ... and from files, by the command
    one = jax.tree_util.tree_map(lambda w: w[saved["test_indices"][0]], zoo.params)
    flat = {"/".join(k.key for k in path): w for path, w in _flat(one)}
    np.savez(tmp_path / "net.npz", **flat)
    np.savez(tmp_path / "other.npz", **{**flat, "Dense_0/bias": np.zeros(3)})
    score = ["mode=score", f"predictor={run_dir / 'predictor'}", f"params=[{tmp_path / 'net.npz'}]"]
    scores = lopt.cli.predict.run(_compose("predict", score), tmp_path / "score_run")
    assert scores["target"] == "test_accuracy" and len(scores["scores"]) == 1
    np.testing.assert_allclose(
        scores["scores"][0]["predictions"], saved["predictions"][:1], rtol=1e-5
    )
    assert (tmp_path / "score_run" / "scores.json").is_file()
    other = [*score[:2], f"params=[{tmp_path / 'other.npz'}]"]
    with pytest.raises(ValueError, match=r"other.npz: .*\['Dense_0'\]\['bias'\] has shape \(3,\)"):
        lopt.cli.predict.run(_compose("predict", other), tmp_path / "refused")

    # more runs for the page: another split seed, and the weightless baseline
    for extra in (
        ["split_seed=1"],
        ["model=hyperparameters"],
        ["model=hyperparameters", "split_seed=1"],
    ):
        lopt.cli.predict.run(
            _compose("predict", [*PREDICT_OVERRIDES, zoo_path, *extra]), tmp_path / "_".join(extra)
        )

    # the results page is built from these files alone
    page = tmp_path / "docs" / "weight_space.md"
    script = Path(__file__).parents[1] / "scripts" / "weight_space_page.py"
    argv = ["--zoos", str(root / "zoo_run"), "--results", str(tmp_path), "--out", str(page)]
    argv += ["--resamples", "200"]
    subprocess.run([sys.executable, str(script), *argv], check=True, capture_output=True)
    text = page.read_text()
    assert "| cnn | Deep Sets (per tensor) |" in text and "96 networks" in text
    assert "| cnn | hyperparameters only |" in text and "split seeds [0, 1]" in text
    assert "by choice `output/axis1` (Dense_0/bias:0, Dense_0/kernel:1)" in text
    assert "| cnn | Deep Sets (per tensor) − hyperparameters only |" in text
    assert "NFN paper (Zhou et al. 2023)" in text
    assert (
        tmp_path / "docs" / "weight_space" / "cnn_deepsets_per_tensor.png"
    ).stat().st_size > 1000

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
        "deepsets_per_tensor_split0_seed0",
        "deepsets_per_tensor_split0_seed1",
        "statnn_split0_seed0",
        "statnn_split0_seed1",
    ]
