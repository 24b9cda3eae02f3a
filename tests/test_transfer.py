"""A saved learned optimizer fits any model with the same weight-space structure: another
construction order, other module names, another width; and says how another architecture
differs."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt.learned import load_learned_optimizer, load_optimizer
from lopt.nf import matching
from lopt.tasks import derive_spec


class OutputFirst(nn.Module):
    """The mlp_digits MLP with its output layer constructed first: flax names it Dense_0."""

    width: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.width)(x)))


class Named(nn.Module):
    """The same MLP with other module names, listed in another order."""

    width: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10, name="a_readout")(nn.relu(nn.Dense(self.width, name="z_hidden")(x)))


class Deeper(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(32)(nn.relu(nn.Dense(32)(x)))))


def model_and_spec(module):
    x = jnp.zeros((1, 64))
    params = module.init(jax.random.key(3), x)["params"]
    spec = derive_spec(lambda p, inputs: module.apply({"params": p}, inputs), params, x)
    return params, spec


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A unf optimizer of mlp_digits (width 32) with a live network, saved."""
    task = lopt.get_task("mlp_digits")
    opt = lopt.make_optimizer("unf", task.spec, beta=0.5)
    theta = opt.init_meta(jax.random.key(0), task.init(jax.random.key(1)))
    path = tmp_path_factory.mktemp("opt") / "unf"
    lopt.save_optimizer(path, opt, theta)
    return path


@pytest.mark.parametrize("module", [OutputFirst(width=48), Named(width=48)])
def test_another_order_names_and_width_give_the_identical_update(saved, module):
    params, spec = model_and_spec(module)
    hidden, readout = (
        ("Dense_1", "Dense_0") if isinstance(module, OutputFirst) else ("z_hidden", "a_readout")
    )
    # The same tensors, laid out as the trained model (Dense_0 hidden, Dense_1 readout).
    original = lopt.get_task("mlp_digits", width=48)
    to_original = lambda tree: {"Dense_0": tree[hidden], "Dense_1": tree[readout]}
    grads = jax.tree.map(lambda p: jnp.sin(3.0 * p) + 0.1, params)

    ours = load_optimizer(saved, spec)
    reference = load_optimizer(saved, original.spec)
    state, state_ref = ours.init(params), reference.init(to_original(params))
    for _ in range(3):
        updates, state = ours.update(grads, state, params)
        updates_ref, state_ref = reference.update(
            to_original(grads), state_ref, to_original(params)
        )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
            to_original(updates),
            updates_ref,
        )
    assert jax.tree.structure(updates) == jax.tree.structure(params)  # the model's layout


def test_another_architecture_is_named_not_a_shape_error(saved):
    _, spec = model_and_spec(Deeper())
    with pytest.raises(matching.WeightSpaceMismatch) as error:
        load_optimizer(saved, spec)
    message = str(error.value)
    assert "architecture differs" in message
    assert "the model has 1 tensor(s) with axes (hidden, hidden)" in message
    assert "trained on a weight space with 0" in message


def test_connected_differently_is_reported():
    a = {"k1": ("h", "g"), "k2": ("g", "h")}
    b = {"k1": ("h", "g"), "k2": ("h", "g")}
    with pytest.raises(matching.WeightSpaceMismatch, match="connected differently"):
        matching.match_tensors(matching.describe_weight_space(a), b)


def test_automorphisms_pick_the_first_match_in_the_models_order():
    trained = {"a": ("x", "h"), "b": ("y", "g")}
    model = {"p": ("u", "m"), "q": ("v", "n")}
    space = matching.describe_weight_space(trained)
    assert matching.match_tensors(space, model) == (0, 1)
    assert matching.canonical_spec(space) == [("h0", "h1"), ("h2", "h3")]


def test_format_3_files_still_load_for_the_trained_tree_order(saved, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "theta.msgpack").write_bytes((saved / "theta.msgpack").read_bytes())
    document = json.loads((saved / "config.json").read_text())
    del document["weight_space"]
    document["format_version"] = 3
    (old / "config.json").write_text(json.dumps(document))
    task = lopt.get_task("mlp_digits", width=48)
    opt, theta = load_learned_optimizer(old, task.spec)
    fresh, theta_new = load_learned_optimizer(saved, task.spec)
    params = task.init(jax.random.key(0))
    grads = jax.tree.map(jnp.cos, params)
    a, _ = opt.update(theta, grads, opt.init(params), params)
    b, _ = fresh.update(theta_new, grads, fresh.init(params), params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9), a, b)


def format_3_copy(saved, directory):
    """``saved`` as format 3 wrote it: no weight-space structure, no theta hash."""
    directory.mkdir()
    (directory / "theta.msgpack").write_bytes((saved / "theta.msgpack").read_bytes())
    document = json.loads((saved / "config.json").read_text())
    del document["weight_space"], document["theta_sha256"]
    document["format_version"] = 3
    (directory / "config.json").write_text(json.dumps(document))
    return directory


@pytest.mark.filterwarnings("ignore:.*cannot be checked for corruption")
def test_format_3_file_on_another_tree_order_says_why_and_how_to_resave(saved, tmp_path):
    old = format_3_copy(saved, tmp_path / "old")
    params, spec = model_and_spec(OutputFirst(width=48))
    message = r"format version 3.*tree order.*save it again, as format 5"
    with pytest.raises(lopt.learned.SavedOptimizerError, match=message):
        load_optimizer(old, spec).init(params)
    # The same check where the evaluation loads it (with the model's example params).
    with pytest.raises(lopt.learned.SavedOptimizerError, match=message):
        load_learned_optimizer(old, spec, example_params=params)

    # The advice works: loaded with the trained model's spec and saved again, it fits.
    trained_spec = lopt.get_task("mlp_digits").spec
    lopt.save_optimizer(tmp_path / "new", *load_learned_optimizer(old, trained_spec))
    assert json.loads((tmp_path / "new" / "config.json").read_text())["format_version"] == 5
    load_optimizer(tmp_path / "new", spec).init(params)
