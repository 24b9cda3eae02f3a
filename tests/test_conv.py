"""The loop-friendly convolution: same values and gradients as XLA's, fast inside a scan.

Under ``vmap`` the convolution and its gradients have their own batching rules; the tests
compare them with a loop over particles of the unbatched computation, to float32 rounding:
``rtol = atol = 1e-5`` for values, ``1e-4`` for gradients and for short training runs.
"""

import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lopt.nf.spec import Spatial
from lopt.tasks import get_task
from lopt.tasks.conv import SMALL_PATCH, Conv, conv2d

PARTICLES = 3


def reference(x, kernel, stride=1):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.jit, static_argnums=0)
def values_and_gradients(conv, x, kernel, cotangent):
    """``conv(x, kernel)`` and its pullback of ``cotangent``, as one compiled program (op by
    op, the checks below would spend most of their time dispatching)."""
    value, pullback = jax.vjp(conv, x, kernel)
    return value, pullback(cotangent)


@settings(max_examples=8, deadline=None)
@given(
    kernel_size=st.sampled_from([(1, 1), (2, 2), (3, 3), (3, 2), (4, 5)]),
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    channels=st.integers(1, 4),
    features=st.integers(1, 4),
)
def test_values_and_gradients_match_xla(kernel_size, height, width, channels, features):
    key_x, key_k, key_g = jax.random.split(jax.random.key(height * 7 + width), 3)
    x = jax.random.normal(key_x, (2, height, width, channels))
    kernel = jax.random.normal(key_k, (*kernel_size, channels, features))
    cotangent = jax.random.normal(key_g, (2, height, width, features))
    ours = values_and_gradients(conv2d, x, kernel, cotangent)
    theirs = values_and_gradients(reference, x, kernel, cotangent)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(ours[1], theirs[1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_strided_convolution_falls_back_to_xla():
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
    np.testing.assert_allclose(conv2d(x, kernel, 2), reference(x, kernel, 2), rtol=1e-5)


def test_module_matches_flax_conv():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    ours, theirs = Conv(4, (3, 3)), nn.Conv(4, (3, 3), padding="SAME")
    params = theirs.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, params
    )
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5)


def test_cnn_spec_keeps_spatial_ids():
    task = get_task("cnn_digits", channels=(4, 6), batch_size=8)
    kernel_axes = task.spec["Conv_1"]["kernel"]
    assert all(isinstance(axis, Spatial) for axis in kernel_axes[:2])
    assert kernel_axes[2] == task.spec["Conv_0"]["kernel"][3]


def particle(tree, axis, index):
    """Particle ``index``'s slice of ``tree`` (batched on ``axis``: 0, or None for shared)."""
    return tree if axis is None else jax.tree.map(lambda leaf: leaf[index], tree)


def per_particle(fn, in_axes, *args):
    """``fn`` applied to each particle's slice of the batched ``args``, stacked."""
    results = []
    for index in range(PARTICLES):
        pairs = zip(args, in_axes, strict=True)
        results.append(fn(*(particle(arg, axis, index) for arg, axis in pairs)))
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *results)


def assert_trees_close(got, want, tolerance):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(
    ("kernel_size", "channels", "in_axes"),
    [
        ((3, 3), 1, (0, 0)),
        ((2, 2), 3, (0, 0)),
        ((3, 3), 5, (0, 0)),
        ((4, 5), 2, (0, 0)),
        ((1, 1), SMALL_PATCH + 1, (0, 0)),
        ((3, 3), 5, (0, None)),
        ((3, 2), 5, (None, 0)),
    ],
    ids=["im2col", "im2col-even", "loop", "loop-uneven", "loop-1x1", "shared-kernel", "shared-x"],
)
def test_vmapped_values_and_gradients_match_a_loop(kernel_size, channels, in_axes):
    key_x, key_k, key_g = jax.random.split(jax.random.key(channels), 3)
    x = jax.random.normal(key_x, (PARTICLES, 2, 5, 6, channels))
    kernel = jax.random.normal(key_k, (PARTICLES, *kernel_size, channels, 4))
    cotangent = jax.random.normal(key_g, (PARTICLES, 2, 5, 6, 4))
    x = x if in_axes[0] == 0 else x[0]
    kernel = kernel if in_axes[1] == 0 else kernel[0]

    def value_and_vjp(conv):
        return lambda x, kernel, g: (conv(x, kernel), jax.vjp(conv, x, kernel)[1](g))

    vmapped = jax.jit(jax.vmap(value_and_vjp(conv2d), (*in_axes, 0)))(x, kernel, cotangent)
    looped = per_particle(jax.jit(value_and_vjp(conv2d)), (*in_axes, 0), x, kernel, cotangent)
    xla = per_particle(value_and_vjp(reference), (*in_axes, 0), x, kernel, cotangent)
    for want in (looped, xla):
        np.testing.assert_allclose(vmapped[0], want[0], rtol=1e-5, atol=1e-5)
        assert_trees_close(vmapped[1], want[1], 1e-4)


def test_nested_vmap_matches_xla():
    x = jax.random.normal(jax.random.key(0), (2, PARTICLES, 2, 4, 4, 3))
    kernel = jax.random.normal(jax.random.key(1), (2, PARTICLES, 3, 3, 3, 5))
    nested = jax.jit(jax.vmap(jax.vmap(conv2d)))(x, kernel)
    want = jax.vmap(jax.vmap(reference))(x, kernel)
    np.testing.assert_allclose(nested, want, rtol=1e-5, atol=1e-5)


def sgd_run(task, steps):
    """``run(params, key)``: the losses and final params of ``steps`` SGD steps in a scan."""
    opt = optax.sgd(0.5)

    def run(params, key):
        def step(carry, step_key):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, task.batch(step_key))
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        carry, losses = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
        return losses, carry[0]

    return run


@pytest.mark.slow
def test_vmapped_training_in_scan_matches_a_loop():
    # the first layer (one input channel) takes the im2col path, the second the loop
    task = get_task("cnn_digits", channels=(4, 6), batch_size=16)
    params = jax.vmap(task.init)(jax.random.split(jax.random.key(0), PARTICLES))
    keys = jax.random.split(jax.random.key(1), PARTICLES)
    run = sgd_run(task, steps=6)
    vmapped = jax.jit(jax.vmap(run))(params, keys)
    looped = per_particle(jax.jit(run), (0, 0), params, keys)
    assert_trees_close(vmapped, looped, 1e-4)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), vmapped[1], params)
    assert min(jax.tree.leaves(moved)) > 1e-3  # the runs really trained every kernel


@pytest.mark.slow
def test_vmapped_second_order_gradients_match_a_loop():
    # the gradient through an inner step differentiates the convolution's gradients
    task = get_task("cnn_digits", channels=(4, 6), batch_size=8)
    params = jax.vmap(task.init)(jax.random.split(jax.random.key(0), PARTICLES))
    batches = jax.vmap(task.batch)(jax.random.split(jax.random.key(1), PARTICLES))

    def after_step(learning_rate, params, batch):
        grads = jax.grad(task.loss)(params, batch)
        stepped = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
        return task.loss(stepped, batch)

    meta_grad = jax.grad(after_step, argnums=(0, 1))
    vmapped = jax.jit(jax.vmap(meta_grad, (None, 0, 0)))(0.3, params, batches)
    looped = per_particle(jax.jit(meta_grad), (None, 0, 0), 0.3, params, batches)
    assert_trees_close(vmapped, looped, 1e-4)


SPLIT_OVER_DEVICES = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from lopt.tasks.conv import conv2d

split = NamedSharding(Mesh(np.array(jax.devices()), ("particles",)), PartitionSpec("particles"))
x = jax.random.normal(jax.random.key(0), (4, 2, 6, 6, 5))
kernel = jax.random.normal(jax.random.key(1), (4, 3, 3, 5, 7))
loss = lambda x, kernel: jnp.sum(jnp.sin(conv2d(x, kernel)))
step = jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)))
sharded = jax.jit(step, in_shardings=(split, split), out_shardings=split)
program = sharded.lower(x, kernel).compile().as_text()
assert "all-gather" not in program and "all-to-all" not in program, program
got, want = sharded(x, kernel), jax.jit(step)(x, kernel)
for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b)
"""


@pytest.mark.slow
def test_particles_split_over_devices_stay_on_their_devices():
    # each device loops over its own particles: no particle is gathered to another device
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run(
        [sys.executable, "-c", SPLIT_OVER_DEVICES], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
