"""Zoo generation, the on-disk zoo format, and importing an outside zoo."""

from __future__ import annotations

import csv
import gzip
import io
import json

import jax
import numpy as np
import pytest

import lopt.nf as nf
import lopt.tasks
from lopt.nf.spec_json import spec_from_json, spec_to_json
from lopt.zoo import (
    HyperparameterRanges,
    ZooFormatError,
    ZooSettings,
    addition_problems,
    generate_zoo,
    import_array_zoo,
    load_zoo,
    make_problem,
    make_zoo_trainer,
)

TINY_RANGES = HyperparameterRanges(steps=(2, 6), batch_sizes=(4, 8))


@pytest.fixture(scope="module")
def tiny_problem():
    return make_problem("cnn_digits", channels=(3,))


@pytest.fixture(scope="module")
def tiny_zoo_dir(tmp_path_factory, tiny_problem):
    directory = tmp_path_factory.mktemp("zoo") / "cnn"
    settings = ZooSettings(count=6, shard_size=3, ranges=TINY_RANGES)
    generate_zoo(directory, tiny_problem, settings, seed=3, progress=False)
    return directory


def test_addition_problems_are_correct_sums():
    data = addition_problems(2)
    inputs, targets = data["train"]["inputs"], data["train"]["targets"]
    assert len(inputs) + len(data["test"]["inputs"]) == 10_000
    a = inputs[:, 0] + 10 * inputs[:, 1]
    b = inputs[:, 3] + 10 * inputs[:, 4]
    answer = targets @ np.array([1, 10, 100])
    np.testing.assert_array_equal(answer, a + b)


def test_rnn_spec_is_derived_and_a_true_symmetry():
    problem = make_problem("rnn_addition", hidden_size=6, digits=1)
    params = problem.init(jax.random.key(0))
    hidden = nf.symmetry_ids(problem.spec)
    assert len(hidden) == 1  # one GRU hidden space: both recurrent axes, biases, readout
    (hidden_id,) = hidden
    assert problem.spec["gru"]["hz"]["kernel"] == (hidden_id, hidden_id)
    assert problem.spec["readout"]["kernel"][0] == hidden_id
    # the tokens, like the answer classes, are permuted by choice: one id for the vocabulary
    # axis of all three input kernels
    vocabulary = {problem.spec["gru"][gate]["kernel"][0] for gate in ("ir", "iz", "in")}
    assert len(vocabulary) == 1 and not nf.is_symmetry(vocabulary.pop())
    inputs = problem.train_inputs[:4]
    report = lopt.tasks.check_symmetry(
        problem.apply, params, problem.spec, jax.random.key(1), inputs=inputs
    )
    assert max(report.errors.values()) <= report.tolerance


def test_gru_init_runs_no_lapack_qr():
    # flax's orthogonal recurrent init is a LAPACK QR; batched over networks it deadlocked
    # XLA's CPU thread pool on 2 cores from 8 networks per call on
    problem = make_problem("rnn_addition", hidden_size=4, digits=1)
    keys = jax.random.split(jax.random.key(0), 8)
    lowered = jax.jit(jax.vmap(problem.init)).lower(keys).as_text()
    assert "geqrf" not in lowered and "householder" not in lowered


@pytest.mark.slow
def test_gru_zoo_trains_32_networks_per_call():
    problem = make_problem("rnn_addition", hidden_size=4, digits=1)
    ranges = HyperparameterRanges(steps=(1, 2), batch_sizes=(2,))
    trainer = make_zoo_trainer(problem, ranges, chunk_size=32)
    params, _, metrics = trainer.train(0, np.arange(32))
    assert params["gru"]["hz"]["kernel"].shape == (32, 4, 4)
    assert np.all(np.isfinite(metrics["test_accuracy"]))


@pytest.mark.slow
def test_networks_depend_on_seed_and_index_only():
    problem = make_problem("rnn_addition", hidden_size=4, digits=1)
    ranges = HyperparameterRanges(steps=(2, 5), batch_sizes=(2, 4))
    one_call = make_zoo_trainer(problem, ranges, chunk_size=4).train(7, np.arange(4))
    pairs = make_zoo_trainer(problem, ranges, chunk_size=2)
    halves = [pairs.train(7, np.arange(0, 2)), pairs.train(7, np.arange(2, 4))]
    joined = jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *halves)
    for a, b in zip(
        jax.tree_util.tree_leaves(one_call), jax.tree_util.tree_leaves(joined), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a short last chunk is padded, and the padding cut off
    (tail_params, _, tail_metrics) = pairs.train(7, np.arange(3, 4))
    assert tail_metrics["test_accuracy"].shape == (1,)
    np.testing.assert_allclose(
        tail_params["readout"]["kernel"][0], one_call[0]["readout"]["kernel"][3], rtol=1e-5
    )
    other_seed = make_zoo_trainer(problem, ranges, chunk_size=4).train(8, np.arange(4))
    assert not np.allclose(other_seed[0]["readout"]["kernel"], one_call[0]["readout"]["kernel"])


def test_spec_encoding_round_trips(tiny_problem):
    encoded = json.loads(json.dumps(spec_to_json(tiny_problem.spec)))
    assert spec_from_json(encoded) == tiny_problem.spec


def test_a_bad_spec_entry_is_named():
    with pytest.raises(ValueError, match="unknown permutation id kind 'hiden'"):
        spec_from_json({"w": [{"hiden": "h"}]})
    with pytest.raises(ValueError, match="bad permutation id entry"):
        spec_from_json({"w": ["h"]})
    with pytest.raises(ValueError, match="only string permutation ids"):
        spec_to_json({"w": (3,)})


def test_zoo_round_trip_and_resume_match_one_shot(tiny_zoo_dir, tiny_problem, tmp_path):
    zoo = load_zoo(tiny_zoo_dir)
    assert zoo.size == 6
    assert zoo.spec == tiny_problem.spec
    assert len(zoo.manifest["shards"]) == 2
    assert set(zoo.metrics) == {"test_accuracy", "test_loss"}
    assert set(zoo.hyperparameters) >= {"learning_rate", "batch_size", "num_steps"}
    assert zoo.params["Conv_0"]["kernel"].shape == (6, 3, 3, 1, 3)
    # resume: 3 networks first, then the rest appended, two a call (a shard of 3 ends in a
    # padded call); the one-shot zoo trained all 6 in one call. Equal up to float rounding:
    # a vmapped batch of another size may round differently.
    resumed = tmp_path / "resumed"
    for count in (3, 6):
        settings = ZooSettings(count=count, shard_size=3, chunk_size=2, ranges=TINY_RANGES)
        generate_zoo(resumed, tiny_problem, settings, seed=3, progress=False)
    again = load_zoo(resumed)
    assert len(again.manifest["shards"]) == 2
    for a, b in zip(
        jax.tree_util.tree_leaves(zoo.params), jax.tree_util.tree_leaves(again.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        zoo.hyperparameters["num_steps"], again.hyperparameters["num_steps"]
    )
    np.testing.assert_allclose(zoo.metrics["test_loss"], again.metrics["test_loss"], rtol=1e-5)


def test_resume_with_other_settings_is_refused(tiny_zoo_dir, tiny_problem):
    settings = ZooSettings(count=9, shard_size=3, ranges=TINY_RANGES)
    before = {p.name: p.read_bytes() for p in tiny_zoo_dir.iterdir()}
    with pytest.raises(ZooFormatError, match="other settings") as error:
        generate_zoo(tiny_zoo_dir, tiny_problem, settings, seed=4, progress=False)
    # Only the keys that differ are named, not both settings in full.
    assert "\n  seed: 3 -> 4\n" in str(error.value)
    assert "shard_size" not in str(error.value) and "ranges" not in str(error.value)
    assert {p.name: p.read_bytes() for p in tiny_zoo_dir.iterdir()} == before


def test_damaged_shard_is_named(tiny_zoo_dir, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in tiny_zoo_dir.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    shard = damaged / "shard_00001.npz"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF
    shard.write_bytes(bytes(content))
    with pytest.raises(ZooFormatError, match=r"shard_00001\.npz is damaged"):
        load_zoo(damaged)
    shard.unlink()
    with pytest.raises(ZooFormatError, match="missing"):
        load_zoo(damaged)


def test_not_a_zoo_and_wrong_version(tmp_path):
    with pytest.raises(ZooFormatError, match=r"no manifest\.json"):
        load_zoo(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "lopt-zoo", "version": 99}))
    with pytest.raises(ZooFormatError, match="version 99"):
        load_zoo(tmp_path)


def test_zoo_is_deterministic_for_a_seed(tiny_zoo_dir, tiny_problem, tmp_path):
    settings = ZooSettings(count=6, shard_size=3, ranges=TINY_RANGES)
    again = tmp_path / "again"
    generate_zoo(again, tiny_problem, settings, seed=3, progress=False)
    a, b = load_zoo(tiny_zoo_dir), load_zoo(again)
    np.testing.assert_array_equal(
        a.hyperparameters["learning_rate"], b.hyperparameters["learning_rate"]
    )
    for x, y in zip(
        jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=True
    ):
        np.testing.assert_array_equal(x, y)  # the same program: bit for bit


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="learning_rate"):
        HyperparameterRanges(learning_rate=(0.1, 0.01))
    with pytest.raises(ValueError, match="unknown zoo problem"):
        make_problem("mlp_cifar")
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        ZooSettings(chunk_size=0)


# tensor name, shape, first column: the bias of the conv layer lies after the dense layer
TINY_LAYOUT = [
    ("Conv_0/kernel", (3, 3, 1, 3), 0),
    ("Dense_0/kernel", (3, 10), 27),
    ("Dense_0/bias", (10,), 57),
    ("Conv_0/bias", (3,), 67),
]


def _write_array_zoo(directory, count=5, *, gz=False, layout=TINY_LAYOUT):
    """A zoo in the Small CNN Zoo's layout: weights.npy, layout.csv, metrics.csv."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(count, 70)).astype(np.float32)
    np.save(directory / "weights.npy", weights)
    with open(directory / "layout.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["varname", "start_idx", "end_idx", "size", "shape"])
        for name, shape, start in layout:
            size = int(np.prod(shape))
            writer.writerow([name, start, start + size, size, str(shape)])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["config.learning_rate", "config.optimizer", "test_accuracy", "modeldir"])
    for i in range(count):
        writer.writerow([10.0**-i, "adam", "" if i == 3 else 0.1 * i, f"run/{i}"])
    name = "metrics.csv.gz" if gz else "metrics.csv"
    data = text.getvalue().encode()
    (directory / name).write_bytes(gzip.compress(data) if gz else data)
    return weights


@pytest.mark.parametrize("gz", [False, True])
def test_array_zoo_is_imported(tmp_path, tiny_problem, gz):
    weights = _write_array_zoo(tmp_path / "outside", gz=gz)
    summary = import_array_zoo(
        tmp_path / "outside", tmp_path / "zoo", tiny_problem.spec, rows=[4, 0, 3], shard_size=2
    )
    assert summary["networks"] == 3 and summary["hyperparameters"] == ["learning_rate"]
    assert summary["skipped_columns"] == ["config.optimizer", "modeldir"]
    zoo = load_zoo(tmp_path / "zoo")
    assert zoo.spec == tiny_problem.spec and len(zoo.manifest["shards"]) == 2
    np.testing.assert_array_equal(
        zoo.params["Conv_0"]["kernel"], weights[[4, 0, 3], :27].reshape(3, 3, 3, 1, 3)
    )
    np.testing.assert_array_equal(zoo.params["Conv_0"]["bias"], weights[[4, 0, 3], 67:70])
    np.testing.assert_array_equal(zoo.params["Dense_0"]["bias"], weights[[4, 0, 3], 57:67])
    np.testing.assert_allclose(zoo.hyperparameters["learning_rate"], [1e-4, 1.0, 1e-3])
    np.testing.assert_allclose(zoo.metrics["test_accuracy"], [0.4, 0.0, np.nan])
    # importing again changes nothing; other rows into the same zoo are refused
    again = dict(rows=[4, 0, 3], shard_size=2)
    assert (
        import_array_zoo(tmp_path / "outside", tmp_path / "zoo", tiny_problem.spec, **again)[
            "networks"
        ]
        == 3
    )
    with pytest.raises(ZooFormatError, match="other settings"):
        import_array_zoo(tmp_path / "outside", tmp_path / "zoo", tiny_problem.spec)


def test_array_zoo_of_another_layout_is_refused(tmp_path, tiny_problem):
    bad = [("Conv_0/kernel", (3, 3, 1, 3), 0), ("Conv_0/bias", (3,), 26)]  # overlap
    _write_array_zoo(tmp_path / "overlap", layout=bad)
    with pytest.raises(ZooFormatError, match="Conv_0/kernel and Conv_0/bias overlap"):
        import_array_zoo(tmp_path / "overlap", tmp_path / "z1", tiny_problem.spec)
    _write_array_zoo(tmp_path / "short", layout=TINY_LAYOUT)
    (tmp_path / "short" / "layout.csv").write_text(
        'varname,start_idx,end_idx,shape\nConv_0/kernel,0,27,"(3, 3, 2)"\n'
    )
    with pytest.raises(
        ZooFormatError,
        match=r"layout.csv:2: slice 0:27 holds 27 values, shape \(3, 3, 2\) needs 18",
    ):
        import_array_zoo(tmp_path / "short", tmp_path / "z2", tiny_problem.spec)
    _write_array_zoo(tmp_path / "wide", layout=TINY_LAYOUT)
    wider = make_problem("cnn_digits", channels=(4,)).spec
    with pytest.raises(ZooFormatError, match="the spec does not fit"):
        import_array_zoo(tmp_path / "wide", tmp_path / "z3", {**wider, "Conv_0": {}})
    (tmp_path / "wide" / "metrics.csv").write_text("test_accuracy\n0.5\n")
    with pytest.raises(ZooFormatError, match="has 1 rows"):
        import_array_zoo(tmp_path / "wide", tmp_path / "z4", tiny_problem.spec)


@pytest.mark.parametrize(("name", "count"), [("rnn_paper", 2000), ("rnn_paper_10k", 10_000)])
def test_paper_rnn_zoo_varies_only_learning_rate_and_batch_size(name, count):
    from hydra import compose, initialize_config_module

    from lopt.cli.zoo import settings_from_config
    from lopt.zoo import sample_hyperparameters

    with initialize_config_module(config_module="lopt.configs", version_base="1.3"):
        cfg = compose(config_name="zoo", overrides=[f"zoo={name}"])
    assert cfg.zoo.target == "test_success" and cfg.zoo.count == count
    settings = settings_from_config(cfg.zoo)
    keys = jax.random.split(jax.random.key(0), 256)
    hyper = jax.vmap(lambda k: sample_hyperparameters(k, settings.ranges))(keys)
    assert set(np.unique(hyper.batch_size).tolist()) == {64, 128, 256}
    assert 1e-4 <= float(hyper.learning_rate.min()) < 2e-4
    assert 5e-3 < float(hyper.learning_rate.max()) <= 1e-2
    np.testing.assert_allclose(hyper.init_scale, 1.0, rtol=1e-6)
    np.testing.assert_allclose(hyper.subset_fraction, 1.0, rtol=1e-6)
    assert set(np.unique(hyper.num_steps).tolist()) == {4000}
