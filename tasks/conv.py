"""A 2-d convolution whose gradient is fast inside ``lax.scan`` on CPU.

Inner training runs live inside ``lax.scan``. There, XLA's CPU backend computes the
gradient of a convolution (a convolution over the batch axis for the kernel, a dilated one
for the input) with a slow generic loop: a CNN training step took ~120 ms inside a scan
against ~4 ms alone (jax-ml/jax#12868). :func:`conv2d` keeps ``lax.conv_general_dilated``
for the forward pass, so the computation and its spec derivation are unchanged, and
computes both gradients with shifted windows and one matrix product each (im2col), which
run at full speed in any loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _padding(kernel_shape: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """XLA's ``SAME`` padding for stride 1: ``(k - 1) // 2`` before, the rest after."""
    return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_shape[:2])


@jax.custom_vjp
def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), _padding(kernel.shape), dimension_numbers=_DIMENSIONS
    )


def _windows(padded: jax.Array, kh: int, kw: int, height: int, width: int) -> list[jax.Array]:
    """The ``kh * kw`` shifted ``(B, height, width, C)`` views of a padded input."""
    return [padded[:, i : i + height, j : j + width, :] for i in range(kh) for j in range(kw)]


def _conv_same_fwd(x, kernel):
    return _conv_same(x, kernel), (x, kernel)


def _conv_same_bwd(residual, g):
    x, kernel = residual
    kh, kw, cin, cout = kernel.shape
    batch, height, width, _ = x.shape
    (top, bottom), (left, right) = _padding(kernel.shape)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    # im2col: (B*H*W, kh*kw*C_in), columns ordered like the kernel's leading axes
    patches = jnp.concatenate(_windows(padded, kh, kw, height, width), axis=-1)
    patches = patches.reshape(batch * height * width, kh * kw * cin)
    g_rows = g.reshape(batch * height * width, cout)
    grad_kernel = (patches.T @ g_rows).reshape(kernel.shape)
    # each output position sends g @ W[i, j]^T back to input position (h + i, w + j)
    sent = (g_rows @ kernel.reshape(kh * kw * cin, cout).T).reshape(
        batch, height, width, kh * kw, cin
    )
    # shifted by padding, so the sum is one elementwise loop
    grad_padded = sum(
        jnp.pad(sent[..., tap, :], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
        for tap, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw))
    )
    grad_x = grad_padded[:, top : top + height, left : left + width, :]
    return grad_x, grad_kernel


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``SAME``-padded 2-d convolution of NHWC inputs with an HWIO kernel.

    Args:
        x: ``(B, H, W, C_in)``.
        kernel: ``(kh, kw, C_in, C_out)``.
        stride: spatial stride; stride 1 uses the loop-friendly gradient.

    Returns:
        ``(B, H', W', C_out)`` with ``H' = ceil(H / stride)``.
    """
    if stride == 1:
        return _conv_same(x, kernel)
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=_DIMENSIONS
    )


class Conv(nn.Module):
    """``flax.linen.Conv`` (SAME padding, NHWC) computed with :func:`conv2d`.

    Parameters are named and initialised as flax's: ``kernel`` ``(kh, kw, C_in, C_out)``
    (LeCun normal) and ``bias`` ``(C_out,)`` (zeros).

    Attributes:
        features: output channels.
        kernel_size: ``(kh, kw)``.
        stride: spatial stride.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, x.shape[-1], self.features),
            jnp.float32,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return conv2d(x, kernel.astype(x.dtype), self.stride) + bias.astype(x.dtype)
