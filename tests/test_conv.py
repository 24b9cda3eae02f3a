"""The loop-friendly convolution: same values and gradients as XLA's, fast inside a scan."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lopt.nf.spec import Spatial
from lopt.tasks import get_task
from lopt.tasks.conv import Conv, conv2d


def reference(x, kernel, stride=1):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


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
    np.testing.assert_allclose(conv2d(x, kernel), reference(x, kernel), rtol=1e-5, atol=1e-5)
    ours = jax.vjp(conv2d, x, kernel)[1](cotangent)
    theirs = jax.vjp(reference, x, kernel)[1](cotangent)
    for got, want in zip(ours, theirs, strict=True):
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
