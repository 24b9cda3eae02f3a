"""The scale benchmark (``scripts/bench_scale.py``) on a tiny model: it produces finite,
positive rows, and the programs it times are the public API's optimizer update and a
plain training step. Nothing here looks at how long anything took."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import lopt

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_scale.py"
TINY_UNF = "unf:hidden=4,depth=1"
POSITIVE = (
    "step ms",
    "update ms",
    "update share",
    "step / adam step",
    "step GFLOP",
    "update GFLOP",
    "update GFLOP/s",
    "update of matmul rate",
    "update XLA MB",
    "update min MB",
    "update GB/s",
    "update of copy bandwidth",
    "state MB",
)


@pytest.fixture(scope="module")
def bench():
    """The script, imported as a module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def workload(bench):
    """An 8-16-3 MLP with one random batch of four."""
    kx, ky = jax.random.split(jax.random.key(0))
    batch = {"x": jax.random.normal(kx, (4, 8)), "y": jax.random.randint(ky, (4,), 0, 3)}
    return bench.Workload("tiny", bench.MLP((16, 3)), batch, "8-16-3, batch 4")


LABELS = ("adam", "sgdm", TINY_UNF)


@pytest.fixture(scope="module")
def setup(bench, workload):
    """The tiny model with Adam, SGD momentum and a small UNF compiled for it."""
    choices = [bench.parse_optimizer(label) for label in LABELS]
    return bench.prepare_workload(workload, choices, jax.random.key(1))


def assert_trees_close(actual, expected):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    leaves = zip(
        jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected), strict=True
    )
    for a, e in leaves:
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)


def test_optimizer_names_take_factory_options(bench):
    label = "unf:hidden=16,depth=1,time=none,zero_output=true"
    choice = bench.parse_optimizer(label)
    assert choice.name == "unf" and choice.label == label
    assert choice.options == {"hidden": 16, "depth": 1, "time": "none", "zero_output": True}
    assert bench.parse_optimizer("adam:learning_rate=0.01").options == {"learning_rate": 0.01}
    for bad in ("rmsprop", "unf:width=3", "unf:hidden", "sgdm:warmup=5"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_optimizer(bad)


def test_rows_are_finite_and_positive(bench, workload, setup):
    result = bench.time_workload(workload, setup, 2, 32, 0.5, jax.random.key(4))
    assert result["params"] == 8 * 16 + 16 + 16 * 3 + 3
    assert result["spec"] == {"hidden": 1, "by_choice": 2, "spatial": 0}
    assert list(result["optimizers"]) == list(LABELS)
    for label, row in result["optimizers"].items():
        for key in POSITIVE:
            assert math.isfinite(row[key]) and row[key] > 0, (label, key, row[key])
    assert result["optimizers"]["adam"]["step / adam step"] == 1.0
    for key in ("matmul GFLOP/s", "copy GB/s"):
        assert math.isfinite(result["reference"][key]) and result["reference"][key] > 0
    table = bench.markdown_table(result)
    assert len(table) == 2 + len(LABELS) and "n/a" not in "\n".join(table)
    assert table[-1].startswith(f"| `{TINY_UNF}` |")


def test_the_bench_times_the_public_update(bench, workload, setup):
    params, grads, prepared = setup.params, setup.grads, setup.prepared[TINY_UNF]
    assert prepared.runners["update"].compiled is prepared.update
    assert prepared.runners["step"].compiled is prepared.step

    # the public API, apart from the bench's optax wrapping, jitting and donation
    opt = lopt.make_optimizer("unf", setup.spec, hidden=4, depth=1)
    theta = opt.init_meta(setup.optimizer_key, params)
    state = opt.init(params)
    public_update = jax.jit(opt.update)
    updates, expected_state = public_update(theta, grads, state, params)
    copy = bench.fresh_copy
    new_params, new_state = prepared.update(copy(params), copy(state), grads)
    assert_trees_close(new_params, optax.apply_updates(params, updates))
    assert_trees_close(new_state, expected_state)
    assert not np.allclose(new_params["Dense_0"]["kernel"], params["Dense_0"]["kernel"])

    # the timed step: the loss's gradient, then that same update
    loss, step_grads = jax.value_and_grad(
        lambda p: bench.loss_fn(workload.module, p, workload.batch)
    )(params)
    step_updates, _ = public_update(theta, step_grads, state, params)
    step_params, _, step_loss = prepared.step(copy(params), copy(state), workload.batch)
    assert_trees_close(step_params, optax.apply_updates(params, step_updates))
    np.testing.assert_allclose(step_loss, loss, rtol=1e-6)
