"""A saved learned optimizer, loaded back, drives plain optax training loops."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt.cli.export import main as export_main
from lopt.learned import SavedOptimizerError, read_theta
from lopt.learned.serialization import CONFIG_FILE, THETA_FILE


class Classifier(nn.Module):
    """A two-hidden-layer MLP, as a user would write it."""

    width: int = 16

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.width)(x))
        x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(4)(x)


def problem(seed: int = 0, count: int = 256):
    """A separable 4-class problem: the class is the quadrant of two input coordinates."""
    x = jax.random.normal(jax.random.key(seed), (count, 6))
    y = (x[:, 0] > 0).astype(jnp.int32) * 2 + (x[:, 1] > 0).astype(jnp.int32)
    return x, y


def spec_of(model: nn.Module, params, x):
    return lopt.derive_spec(lambda p, inputs: model.apply({"params": p}, inputs), params, x)


def fresh_model(width: int, seed: int = 5):
    """A ``Classifier`` of ``width``, its initial params on the problem, and their spec."""
    model = Classifier(width=width)
    x, _ = problem()
    params = model.init(jax.random.key(seed), x)["params"]
    return model, params, spec_of(model, params, x)


@pytest.fixture(scope="module")
def saved_unf(tmp_path_factory):
    """A ``unf`` optimizer saved from a width-8 model's spec."""
    _, params, spec = fresh_model(8, seed=0)
    opt = lopt.make_optimizer("unf", spec, hidden=8)
    theta = opt.init_meta(jax.random.key(1), params)
    path = lopt.save_optimizer(tmp_path_factory.mktemp("saved") / "unf", opt, theta)
    return path, theta


def train_with(optimizer: optax.GradientTransformation, model: nn.Module, steps: int = 60):
    """The canonical optax loop: init, jitted step with value_and_grad, apply_updates."""
    x, y = problem()
    params = model.init(jax.random.key(2), x)["params"]
    opt_state = optimizer.init(params)

    def loss_fn(params):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params, value=loss)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return losses


def test_loaded_optimizer_trains_a_fresh_model_in_a_plain_optax_loop(saved_unf):
    path, _ = saved_unf
    model, _, spec = fresh_model(8)
    optimizer = lopt.load_optimizer(path, spec=spec)
    losses = train_with(optimizer, model)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.6 * losses[0], losses[:: len(losses) // 5]


def test_loaded_optimizer_works_inside_optax_chain_with_clipping(saved_unf):
    path, _ = saved_unf
    model, _, spec = fresh_model(8)
    learned = lopt.load_optimizer(path, spec=spec)
    clipped = optax.chain(optax.clip_by_global_norm(0.1), learned)
    losses = train_with(clipped, model)
    assert losses[-1] < 0.6 * losses[0]
    # Clipping is really applied: the chained run differs from the unclipped one.
    assert not np.allclose(losses, train_with(learned, model))


def test_saved_theta_round_trips_exactly(saved_unf):
    path, theta = saved_unf
    jax.tree.map(np.testing.assert_array_equal, read_theta(path), jax.device_get(theta))


def test_optimizer_saved_at_one_width_applies_to_a_wider_model(saved_unf):
    path, theta = saved_unf
    wide, _, spec = fresh_model(48)
    opt, loaded = lopt.load_learned_optimizer(path, spec=spec)
    # the same meta-parameters, unchanged, serve the wider weight space
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(theta))
    losses = train_with(lopt.as_optax(opt, loaded), wide)
    assert losses[-1] < 0.6 * losses[0]


def test_update_needs_params(saved_unf):
    path, _ = saved_unf
    _, params, spec = fresh_model(8)
    optimizer = lopt.load_optimizer(path, spec=spec)
    state = optimizer.init(params)
    with pytest.raises(ValueError, match="needs the current params"):
        optimizer.update(params, state)


def test_spec_or_params_that_do_not_fit_are_reported(saved_unf):
    path, _ = saved_unf
    _, _, spec = fresh_model(8, seed=0)
    _, large_params, _ = fresh_model(12, seed=0)
    optimizer = lopt.load_optimizer(path, spec=spec)
    optimizer.init(large_params)  # same architecture, other width: fine
    # params whose hidden sizes disagree between the tensors sharing a neuron permutation
    broken = {**large_params, "Dense_1": {**large_params["Dense_1"]}}
    broken["Dense_1"]["kernel"] = jnp.zeros((12, 7))
    with pytest.raises(ValueError, match="Dense_1"):
        optimizer.init(broken)
    # a spec of another architecture (one tensor fewer) does not fit the saved theta
    other = {k: v for k, v in spec.items() if k != "Dense_2"}
    with pytest.raises(ValueError, match=r"architecture differs.*axes"):
        lopt.load_optimizer(path, spec=other)


def test_corrupt_files_and_newer_versions_are_clear_errors(saved_unf, tmp_path):
    path, _ = saved_unf
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((path / CONFIG_FILE).read_text())
    (broken / CONFIG_FILE).write_text(json.dumps(config))
    (broken / THETA_FILE).write_bytes(b"\x00 definitely not msgpack")
    with pytest.raises(SavedOptimizerError, match="corrupt"):
        lopt.load_optimizer(broken, spec=None)

    (broken / THETA_FILE).write_bytes((path / THETA_FILE).read_bytes())
    (broken / CONFIG_FILE).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(SavedOptimizerError, match="newer"):
        lopt.load_optimizer(broken, spec=None)

    for old_version in (1, 2):
        (broken / CONFIG_FILE).write_text(json.dumps({**config, "format_version": old_version}))
        with pytest.raises(
            SavedOptimizerError, match=rf"format version {old_version}.*meta-train it again"
        ):
            lopt.load_optimizer(broken, spec=None)

    (broken / CONFIG_FILE).write_text("{not json")
    with pytest.raises(SavedOptimizerError, match="not valid JSON"):
        lopt.load_optimizer(broken, spec=None)

    with pytest.raises(FileNotFoundError, match="no saved optimizer"):
        lopt.load_optimizer(tmp_path / "missing", spec=None)


def test_theta_of_another_architecture_is_rejected(saved_unf, tmp_path):
    path, _ = saved_unf
    deep = lopt.make_optimizer("unf", {"w": ("h", "h")}, hidden=8, depth=2)
    lopt.save_optimizer(tmp_path / "deep", deep, deep.init_meta(jax.random.key(0)))
    # theta of a depth-2 network under the config of the depth-1 one
    deep_config = json.loads((tmp_path / "deep" / CONFIG_FILE).read_text())
    shallow = json.loads((path / CONFIG_FILE).read_text())
    deep_config["hyperparameters"] = shallow["hyperparameters"]
    (tmp_path / "deep" / CONFIG_FILE).write_text(json.dumps(deep_config))
    with pytest.raises(SavedOptimizerError, match="do not fit an optimizer for this model"):
        lopt.load_optimizer(tmp_path / "deep", spec={"w": ("h", "h")})


def copy_of(path, directory, edit=None):
    """A copy of the saved optimizer ``path`` in ``directory``, its config changed by
    ``edit(document)``."""
    directory.mkdir()
    (directory / THETA_FILE).write_bytes((path / THETA_FILE).read_bytes())
    document = json.loads((path / CONFIG_FILE).read_text())
    if edit is not None:
        edit(document)
    (directory / CONFIG_FILE).write_text(json.dumps(document))
    return directory


def files_of(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_theta_with_flipped_bytes_is_refused_as_corrupt_naming_the_file(saved_unf, tmp_path):
    path, _ = saved_unf
    document = json.loads((path / CONFIG_FILE).read_text())
    assert document["format_version"] == lopt.learned.FORMAT_VERSION == 5
    assert len(document["theta_sha256"]) == 64
    broken = copy_of(path, tmp_path / "broken")
    raw = bytearray((broken / THETA_FILE).read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 8] = bytes(b ^ 0x01 for b in raw[middle : middle + 8])
    (broken / THETA_FILE).write_bytes(bytes(raw))  # still a valid msgpack of arrays
    before = files_of(broken)
    with pytest.raises(SavedOptimizerError, match=rf"{broken / THETA_FILE} is corrupt.*SHA-256"):
        lopt.load_optimizer(broken, spec=None)
    with pytest.raises(SavedOptimizerError, match="is corrupt"):
        read_theta(broken)
    assert files_of(broken) == before


@pytest.mark.parametrize("key", ["hyperparameters", "name"])
def test_config_without_a_required_entry_is_refused_naming_it(saved_unf, tmp_path, key):
    path, _ = saved_unf
    broken = copy_of(path, tmp_path / "broken", lambda document: document.pop(key))
    with pytest.raises(SavedOptimizerError, match=rf"has no '{key}' entry"):
        lopt.load_optimizer(broken, spec=None)


def test_files_without_a_hash_load_with_a_warning_if_older(saved_unf, tmp_path):
    path, theta = saved_unf

    def as_format(version):
        def edit(document):
            del document["theta_sha256"]
            document["format_version"] = version

        return edit

    old = copy_of(path, tmp_path / "old", as_format(4))
    with pytest.warns(UserWarning, match="cannot be checked for corruption.*format version 4"):
        loaded = read_theta(old)
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(theta))
    damaged = copy_of(path, tmp_path / "damaged", as_format(5))
    with pytest.raises(SavedOptimizerError, match="format version 5 but no 'theta_sha256'"):
        read_theta(damaged)


def test_export_refuses_to_overwrite_a_saved_optimizer_unless_asked(saved_unf, tmp_path, capsys):
    path, _ = saved_unf
    target = copy_of(path, tmp_path / "existing")
    before = files_of(target)
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(tmp_path / "no_run"), "-o", str(target)])
    assert exit_info.value.code == 1
    assert f"{target} already holds a saved optimizer; pass --overwrite" in capsys.readouterr().err
    assert files_of(target) == before
    # With the flag the output is accepted; here the missing run is what stops the export.
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "no_run"), "-o", str(target), "--overwrite"])
    error = capsys.readouterr().err
    assert "already holds" not in error and "no_run" in error
    assert files_of(target) == before
