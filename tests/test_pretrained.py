"""The optimizers shipped in ``lopt.pretrained``: loading them for a model of their
architecture, refusing another, the run length they need, their cards and their packaging."""

from __future__ import annotations

import json
import shutil
import tomllib
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import pretrained
from lopt.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
NAME = "mlp_unf"


class MLP(nn.Module):
    """The architecture of ``mlp_augmented_digits``: inputs -> ReLU hidden layers -> logits."""

    hidden: tuple[int, ...] = (32,)
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.classes)(x)


def model_of(hidden: tuple[int, ...] = (32,), inputs: int = 64):
    """Params, spec and gradients of an MLP (params and gradients drawn at random, in numpy:
    no compilation)."""
    model = MLP(hidden)
    x = jax.ShapeDtypeStruct((16, inputs), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    rng = np.random.default_rng(0)
    draw = lambda scale: jax.tree.map(
        lambda leaf: (scale * rng.standard_normal(leaf.shape)).astype(np.float32), shapes
    )
    params, grads = draw(0.1), draw(0.01)
    spec = lopt.derive_spec(lambda p, x: model.apply({"params": p}, x), params, x)
    return params, spec, grads


@pytest.fixture(scope="module")
def task_model():
    return model_of()


def two_updates(optimizer, params, grads):
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    out = []
    for _ in range(2):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out


def test_names_lists_the_shipped_optimizers():
    assert NAME in pretrained.names()
    assert pretrained.names() == tuple(sorted(pretrained.names()))
    assert lopt.pretrained is pretrained


def test_load_is_the_saved_optimizer_as_load_optimizer_reads_it(task_model):
    params, spec, grads = task_model
    optimizer = pretrained.load(NAME, spec)
    assert isinstance(optimizer, optax.GradientTransformation)
    reference = lopt.load_optimizer(pretrained.path(NAME), spec=spec)
    ours, theirs = two_updates(optimizer, params, grads), two_updates(reference, params, grads)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(ours))


def test_it_fits_another_hidden_width_and_input_size():
    params, spec, grads = model_of(hidden=(64,), inputs=20)
    optimizer = pretrained.load(NAME, spec)
    (updates, _) = two_updates(optimizer, params, grads)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))


def test_another_architecture_is_refused_naming_what_differs():
    _, spec, _ = model_of(hidden=(32, 32))
    with pytest.raises(ValueError, match="does not fit") as caught:
        pretrained.load(NAME, spec)
    message = str(caught.value)
    assert NAME in message and "mlp_augmented_digits" in message
    assert "4 parameter tensors" in message  # what it was trained on
    assert "the model has 1 tensor(s) with axes (hidden, hidden)" in message  # what differs


def test_a_fixed_axis_is_refused(task_model):
    _, spec, _ = task_model
    fixed_inputs = {layer: dict(tensors) for layer, tensors in spec.items()}
    fixed_inputs["Dense_0"]["kernel"] = (None, spec["Dense_0"]["kernel"][1])  # inputs: fixed
    with pytest.raises(ValueError, match=f"{NAME}.*fixed"):
        pretrained.load(NAME, fixed_inputs)


def test_an_unknown_name_is_refused_listing_the_names(task_model):
    with pytest.raises(ValueError, match=f"no pretrained optimizer named 'nope'.*{NAME}"):
        pretrained.load("nope", task_model[1])
    with pytest.raises(ValueError, match="no pretrained optimizer"):
        pretrained.card("nope")


def fraction_copy(root: Path) -> str:
    """A copy of the shipped optimizer whose config says its time input is a fraction."""
    target = root / "fraction_rule"
    shutil.copytree(pretrained.path(NAME), target)
    config = json.loads((target / "config.json").read_text())
    config["hyperparameters"]["time"] = "fraction"
    (target / "config.json").write_text(json.dumps(config))
    return target.name


def test_a_rule_that_needs_the_run_length_is_refused_without_it(task_model, tmp_path, monkeypatch):
    name = fraction_copy(tmp_path)
    monkeypatch.setattr(pretrained, "ROOT", tmp_path)
    assert pretrained.names() == (name,)
    with pytest.raises(ValueError, match=f"{name!r} needs num_steps.*'fraction'"):
        pretrained.load(name, task_model[1])


def test_num_steps_past_the_checked_range_warns(task_model):
    spec = task_model[1]
    meta = pretrained.metadata(NAME)
    assert meta["steps_checked"] == 2 * meta["horizon"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretrained.load(NAME, spec)
        pretrained.load(NAME, spec, num_steps=meta["steps_checked"])
    with pytest.warns(UserWarning, match=f"checked up to {meta['steps_checked']} steps"):
        pretrained.load(NAME, spec, num_steps=meta["steps_checked"] + 1)
    with pytest.raises(ValueError, match="positive integer"):
        pretrained.load(NAME, spec, num_steps=0)


def test_the_card_holds_the_evaluations():
    text = pretrained.card(NAME)
    meta = pretrained.metadata(NAME)
    assert text.startswith(f"# `{NAME}`")
    assert "| against | horizon | horizon_2x | width_2x |" in text
    assert "final train loss: geometric mean" in text and "| adam (tuned, lr" in text
    assert "## Where it fails" in text and "**adam_cosine**" in text
    assert "do not edit by hand" in text
    for key in ("name", "backbone", "task", "horizon", "steps_checked", "commit"):
        assert meta[key] is not None, key
    assert meta["name"] == NAME and meta["task"] == "mlp_augmented_digits"
    assert meta["meta_training"]["outer_steps"] > 0
    assert (
        meta["theta_sha256"]
        == json.loads((pretrained.path(NAME) / "config.json").read_text())["theta_sha256"]
    )


def test_the_package_data_covers_every_shipped_file():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "lopt.pretrained" in setuptools["packages"]
    patterns = setuptools["package-data"]["lopt.pretrained"]
    package = ROOT / "lopt" / "pretrained"
    covered = {file for pattern in patterns for file in package.glob(pattern)}
    for name in pretrained.names():
        # A directory of data files is a namespace package: setuptools wants it listed.
        assert f"lopt.pretrained.{name}" in setuptools["packages"]
        files = {file for file in (package / name).iterdir() if file.is_file()}
        expected = {*pretrained.OPTIMIZER_FILES, pretrained.CARD_FILE, pretrained.META_FILE}
        assert {file.name for file in files} == expected
        assert files <= covered, sorted(str(f) for f in files - covered)


def test_the_scheduled_mlp_optimizer_needs_the_run_length_and_decays_to_zero(task_model):
    params, spec, grads = task_model
    name = "mlp_unf_cosine"
    assert pretrained.metadata(name)["task"] == "mlp_augmented_digits"
    with pytest.raises(ValueError, match=f"{name!r} needs num_steps.*'warmup_cosine'"):
        pretrained.load(name, spec)
    optimizer = pretrained.load(name, spec, num_steps=4)
    state, update = optimizer.init(params), jax.jit(optimizer.update)
    sizes = []
    for _ in range(5):
        updates, state = update(grads, state, params)
        sizes.append(max(float(jnp.abs(u).max()) for u in jax.tree.leaves(updates)))
    # The step size follows the cosine over the 4 steps it was told of, then stays at zero.
    assert all(np.isfinite(sizes)) and min(sizes[:4]) > 0 and sizes[4] == 0


@pytest.mark.parametrize("name", pretrained.names())
def test_each_shipped_optimizer_trains_the_task_it_was_trained_on(name):
    meta = pretrained.metadata(name)
    task = get_task(meta["task"], **meta["task_options"])
    optimizer = pretrained.load(name, task.spec, num_steps=meta["horizon"])
    params = task.init(jax.random.key(0))
    batch = task.batch(jax.random.key(1))

    @jax.jit
    def steps(params):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        _, losses = jax.lax.scan(step, (params, optimizer.init(params)), length=20)
        return losses

    losses = np.asarray(steps(params))
    # Twenty steps on one batch: the loss falls from the untrained model's.
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
