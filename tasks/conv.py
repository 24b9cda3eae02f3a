"""A 2-d convolution whose gradient is fast inside ``lax.scan`` and under ``vmap`` on CPU.

Inner training runs live inside ``lax.scan``. There, XLA's CPU backend computes the
gradient of a convolution (a convolution over the batch axis for the kernel, a dilated one
for the input) with a slow generic loop: a CNN training step took ~120 ms inside a scan
against ~4 ms alone (jax-ml/jax#12868). :func:`conv2d` keeps ``lax.conv_general_dilated``
for the forward pass, so the computation and its spec derivation are unchanged, and
computes both gradients with shifted windows and one matrix product each (im2col), which
run at full speed in any loop.

Meta-training vmaps whole inner runs, each with its own kernels, over a population of
particles. jax batches a convolution whose kernel is batched as one grouped convolution,
which XLA's CPU backend runs at a fraction of its ungrouped rate (a vmapped CNN step over
8 particles took twice as long as 8 sequential ones). On CPU the convolution and its two
gradients therefore have their own batching rules (``jax.custom_batching``); other
platforms keep jax's:

* a batched input with a shared kernel folds the particles into the batch, and a shared
  input with batched kernels folds them into the output features: one convolution;
* inputs and kernels both batched run one ungrouped convolution per particle in a loop
  (``lax.map``; with the particles split over devices, each device loops over its own),
  except kernels with few input channels, which XLA convolves far below its matmul rate:
  those are one im2col product batched over particles;
* the input gradient is the correlation of the output gradient with the flipped kernel, a
  convolution as fast as the forward pass inside loops, and the kernel gradient each
  particle's im2col product, with the patches built transposed.

The unbatched computation is the same as without these rules, and the batched one agrees
with it to float32 rounding. Each of the three maps (convolution, input gradient, kernel
gradient) is bilinear, and each one's gradient is written with the other two, so
derivatives of any order (truncated backpropagation through inner training) keep both the
fast gradients and the batching rules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")

SMALL_PATCH = 16
"""Largest patch (``kh * kw * C_in``) whose convolution over particles is one im2col
product. XLA's CPU convolution of one input channel (the CNN's first layer) runs at a few
percent of its matmul rate; the patches of larger inputs cost more memory traffic than
XLA's convolution loses."""

Padding = tuple[tuple[int, int], tuple[int, int]]
KernelSize = tuple[int, int]
Binary = Callable[[jax.Array, jax.Array], jax.Array]


def _padding(kernel_shape: Sequence[int]) -> Padding:
    """XLA's ``SAME`` padding for stride 1: ``(k - 1) // 2`` before, the rest after."""
    return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_shape[:2])


def _swapped(padding: Padding) -> Padding:
    """The padding of the adjoint correlation: each side's amount moves to the other side."""
    return tuple((after, before) for before, after in padding)


def _flipped(kernel: jax.Array) -> jax.Array:
    """``(..., kh, kw, C_in, C_out)`` -> ``(..., kh, kw, C_out, C_in)``, spatially reversed.

    Correlating an output gradient with it gives the input gradient.
    """
    return jnp.flip(kernel, (-4, -3)).swapaxes(-1, -2)


def _windows(padded: jax.Array, kh: int, kw: int, height: int, width: int) -> list[jax.Array]:
    """The ``kh * kw`` shifted ``(..., height, width, C)`` views of a padded input."""
    return [padded[..., i : i + height, j : j + width, :] for i in range(kh) for j in range(kw)]


def _patches(x: jax.Array, kernel_size: KernelSize, padding: Padding) -> jax.Array:
    """im2col: ``(..., H, W, C)`` -> ``(..., H, W, kh * kw * C)``.

    ``padding`` adds ``kh - 1`` rows and ``kw - 1`` columns in all (``SAME``-sized), and the
    last axis is ordered like a kernel's leading ``(kh, kw, C_in)`` axes.
    """
    height, width = x.shape[-3:-1]
    spread = ((0, 0),) * (x.ndim - 3) + (*padding, (0, 0))
    return jnp.concatenate(_windows(jnp.pad(x, spread), *kernel_size, height, width), axis=-1)


# -- the unbatched computations ------------------------------------------------------------


def _im2col_grad_kernel(x: jax.Array, g: jax.Array, kernel_size: KernelSize) -> jax.Array:
    """Kernel gradient of one ``SAME`` convolution as one matrix product.

    Args:
        x: ``(B, H, W, C_in)``, the convolution's input.
        g: ``(B, H, W, C_out)``, the gradient of its output.
        kernel_size: ``(kh, kw)``.

    Returns:
        ``(kh, kw, C_in, C_out)``.
    """
    kh, kw = kernel_size
    batch, height, width, cin = x.shape
    cout = g.shape[-1]
    patches = _patches(x, kernel_size, _padding(kernel_size))
    patches = patches.reshape(batch * height * width, kh * kw * cin)
    g_rows = g.reshape(batch * height * width, cout)
    return (patches.T @ g_rows).reshape(kh, kw, cin, cout)


def _col2im_grad_input(kernel: jax.Array, g: jax.Array) -> jax.Array:
    """Input gradient of one ``SAME`` convolution: one matrix product, then shifted sums.

    Args:
        kernel: ``(kh, kw, C_in, C_out)``.
        g: ``(B, H, W, C_out)``, the gradient of the convolution's output.

    Returns:
        ``(B, H, W, C_in)``.
    """
    kh, kw, cin, cout = kernel.shape
    batch, height, width, _ = g.shape
    (top, _), (left, _) = _padding(kernel.shape)
    g_rows = g.reshape(batch * height * width, cout)
    # each output position sends g @ W[i, j]^T back to input position (h + i, w + j)
    sent = (g_rows @ kernel.reshape(kh * kw * cin, cout).T).reshape(
        batch, height, width, kh * kw, cin
    )
    # shifted by padding, so the sum is one elementwise loop
    grad_padded = sum(
        jnp.pad(sent[..., tap, :], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
        for tap, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw))
    )
    return grad_padded[:, top : top + height, left : left + width, :]


# -- batching rules ------------------------------------------------------------------------


def _leading(axis_size: int, batched: bool, x: jax.Array) -> jax.Array:
    """``x`` with the vmapped axis leading: as it is if batched, else broadcast."""
    return x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))


def _on_cpu_else_vmap(
    on_cpu: Callable[..., jax.Array],
    plain: Callable[..., jax.Array],
    axis_size: int,
    in_batched: Sequence[bool],
    *args: jax.Array,
) -> jax.Array:
    """A batching rule's result: ``on_cpu``'s on CPU, jax's own batching of ``plain`` elsewhere.

    The rules here work around XLA's CPU backend; on accelerators a grouped convolution is
    the fast form of a convolution over particles, and a loop over them would serialise it.
    """
    in_axes = tuple(0 if batched else None for batched in in_batched)
    return jax.lax.platform_dependent(
        *args,
        cpu=functools.partial(on_cpu, axis_size, in_batched),
        default=jax.vmap(plain, in_axes),
    )


def _particle_sharding(mesh: Mesh, sharding: Any, ndim: int) -> NamedSharding:
    """Split over devices on the leading (particle) axis as ``sharding`` is, the rest whole."""
    spec = getattr(sharding, "spec", None)
    particles = spec[0] if spec else None
    return NamedSharding(mesh, PartitionSpec(particles, *(None,) * (ndim - 1)))


def _particle_loop(fn: Binary, sharding_rule: str) -> jax.custom_batching.custom_vmap:
    """``fn`` of each particle in turn: two ``(P, ...)`` operands -> ``(P, ...)``.

    A loop (``lax.map``) runs each particle's ``fn`` at the speed of an unbatched call. SPMD
    partitioning would gather all particles onto every device to index them, so when the
    particles are split over devices each device loops over its own
    (``custom_partitioning``). A further ``vmap`` folds its axis into the particle axis.

    Args:
        fn: one particle's computation, on operands without the particle axis.
        sharding_rule: the loop's factors for Shardy (einsum-like, particles ``p`` first).
    """

    def loop(a: jax.Array, b: jax.Array) -> jax.Array:
        return jax.lax.map(lambda pair: fn(*pair), (a, b))

    def infer(mesh, arg_shapes, result_shape):
        return _particle_sharding(mesh, arg_shapes[0].sharding, len(result_shape.shape))

    def partition(mesh, arg_shapes, result_shape):
        particles = arg_shapes[0].sharding
        operands = tuple(_particle_sharding(mesh, particles, len(a.shape)) for a in arg_shapes)
        return mesh, loop, infer(mesh, arg_shapes, result_shape), operands

    looped = custom_partitioning(loop)
    looped.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=sharding_rule)

    @jax.custom_batching.custom_vmap
    def over_particles(a: jax.Array, b: jax.Array) -> jax.Array:
        return looped(a, b)

    @over_particles.def_vmap
    def over_particles_vmap(axis_size, in_batched, a, b):
        a, b = (_leading(axis_size, *pair) for pair in zip(in_batched, (a, b), strict=True))
        out = over_particles(a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:]))
        return out.reshape(axis_size, -1, *out.shape[1:]), True

    return over_particles


def _im2col_correlate(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """Per-particle correlations as one batched matrix product of patches.

    Args:
        x: ``(P, B, H, W, C_in)``.
        kernel: ``(P, kh, kw, C_in, C_out)``.
        padding: ``((top, bottom), (left, right))``, ``kh - 1`` and ``kw - 1`` in all.

    Returns:
        ``(P, B, H, W, C_out)``.
    """
    particles, kh, kw, cin, cout = kernel.shape
    rows = kernel.reshape(particles, kh * kw * cin, cout)
    return jnp.einsum("pbhwk,pko->pbhwo", _patches(x, (kh, kw), padding), rows)


def _correlate_on_cpu(
    correlate: jax.custom_batching.custom_vmap,
    loop: jax.custom_batching.custom_vmap,
    padding: Padding,
    axis_size: int,
    in_batched: Sequence[bool],
    x: jax.Array,
    kernel: jax.Array,
) -> jax.Array:
    """``correlate`` of every particle: ``(P, B, H, W, C_in)`` with ``(P, kh, kw, C_in, C_out)``.

    Either operand may be unbatched (then without the leading ``P``); ``padding`` is
    ``SAME``-sized, and ``loop`` runs ``correlate`` over particles. Returns
    ``(P, B, H, W, C_out)``.
    """
    x_batched, kernel_batched = in_batched
    if not kernel_batched:
        out = correlate(x.reshape(-1, *x.shape[2:]), kernel)
        return out.reshape(axis_size, -1, *out.shape[1:])
    particles, kh, kw, cin, cout = kernel.shape
    if not x_batched:
        features = jnp.moveaxis(kernel, 0, -2).reshape(kh, kw, cin, particles * cout)
        out = correlate(x, features)
        return jnp.moveaxis(out.reshape(*out.shape[:-1], particles, cout), -2, 0)
    if kh * kw * cin <= SMALL_PATCH:
        return _im2col_correlate(x, kernel, padding)
    return loop(x, kernel)


@functools.cache
def _correlation(padding: Padding) -> jax.custom_batching.custom_vmap:
    """Stride-1 correlation ``(B, H, W, C_in), (kh, kw, C_in, C_out) -> (B, H, W, C_out)``.

    ``lax.conv_general_dilated`` with ``padding`` (``kh - 1`` rows and ``kw - 1`` columns in
    all), batched on CPU by :func:`_correlate_on_cpu`.
    """

    def plain(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), padding, dimension_numbers=_DIMENSIONS
        )

    loop = _particle_loop(plain, "p b h w c, p i j c o -> p b h w o")

    @jax.custom_batching.custom_vmap
    def correlate(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return plain(x, kernel)

    on_cpu = functools.partial(_correlate_on_cpu, correlate, loop, padding)

    @correlate.def_vmap
    def correlate_vmap(axis_size, in_batched, x, kernel):
        return _on_cpu_else_vmap(on_cpu, plain, axis_size, in_batched, x, kernel), True

    return correlate


def _input_gradient_on_cpu(
    axis_size: int, in_batched: Sequence[bool], kernel: jax.Array, g: jax.Array
) -> jax.Array:
    """Input gradients of every particle, as correlations with the flipped kernels.

    col2im over particles is a sum of batched products; the adjoint correlation runs as
    fast as the forward convolution.
    """
    del axis_size
    kernel_batched, g_batched = in_batched
    correlate = _correlation(_swapped(_padding(kernel.shape[-4:])))
    in_axes = (0 if g_batched else None, 0 if kernel_batched else None)
    return jax.vmap(correlate, in_axes)(g, _flipped(kernel))


@jax.custom_batching.custom_vmap
def _input_gradient(kernel: jax.Array, g: jax.Array) -> jax.Array:
    """:func:`_col2im_grad_input`, batched on CPU by :func:`_input_gradient_on_cpu`."""
    return _col2im_grad_input(kernel, g)


@_input_gradient.def_vmap
def _input_gradient_vmap(axis_size, in_batched, kernel, g):
    on_cpu, plain = _input_gradient_on_cpu, _col2im_grad_input
    return _on_cpu_else_vmap(on_cpu, plain, axis_size, in_batched, kernel, g), True


def _rows_grad_kernel(x: jax.Array, g: jax.Array, kernel_size: KernelSize) -> jax.Array:
    """:func:`_im2col_grad_kernel` with the patches built transposed.

    XLA's CPU matmul of a ``(kh * kw * C_in, B * H * W)`` matrix by the gradient runs at
    about twice the rate of the transposed product of ``(B * H * W, kh * kw * C_in)``
    patches; the sums are the same, rounded in another order.
    """
    kh, kw = kernel_size
    batch, height, width, cin = x.shape
    cout = g.shape[-1]
    spread = ((0, 0), (0, 0), *_padding(kernel_size))
    padded = jnp.pad(jnp.moveaxis(x, -1, 0), spread)
    windows = [padded[..., i : i + height, j : j + width] for i in range(kh) for j in range(kw)]
    patches = jnp.stack(windows).reshape(kh * kw * cin, batch * height * width)
    return (patches @ g.reshape(batch * height * width, cout)).reshape(kh, kw, cin, cout)


@functools.cache
def _kernel_gradient(kernel_size: KernelSize) -> jax.custom_batching.custom_vmap:
    """:func:`_im2col_grad_kernel` for ``kernel_size``; on CPU, batched as a particle loop."""
    plain = functools.partial(_im2col_grad_kernel, kernel_size=kernel_size)
    per_particle = functools.partial(_rows_grad_kernel, kernel_size=kernel_size)
    # one particle's patches stay in cache; all particles' at once do not
    loop = _particle_loop(per_particle, "p b h w c, p b h w o -> p i j c o")

    @jax.custom_batching.custom_vmap
    def grad_kernel(x: jax.Array, g: jax.Array) -> jax.Array:
        return plain(x, g)

    def on_cpu(axis_size, in_batched, x, g):
        return loop(*(_leading(axis_size, *pair) for pair in zip(in_batched, (x, g), strict=True)))

    @grad_kernel.def_vmap
    def grad_kernel_vmap(axis_size, in_batched, x, g):
        return _on_cpu_else_vmap(on_cpu, plain, axis_size, in_batched, x, g), True

    return grad_kernel


# -- differentiable bilinear maps ----------------------------------------------------------


@jax.custom_vjp
def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``SAME`` convolution ``(B, H, W, C_in), (kh, kw, C_in, C_out) -> (B, H, W, C_out)``."""
    return _correlation(_padding(kernel.shape))(x, kernel)


def _conv_same_fwd(x, kernel):
    return _conv_same(x, kernel), (x, kernel)


def _conv_same_bwd(residual, g):
    x, kernel = residual
    return _grad_input(kernel, g), _grad_kernel(x, g, kernel.shape[:2])


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


@jax.custom_vjp
def _grad_input(kernel: jax.Array, g: jax.Array) -> jax.Array:
    """Input gradient of :func:`_conv_same`.

    ``(kh, kw, C_in, C_out)`` kernel, ``(B, H, W, C_out)`` output gradient -> ``(B, H, W, C_in)``.
    """
    return _input_gradient(kernel, g)


def _grad_input_fwd(kernel, g):
    return _grad_input(kernel, g), (kernel, g)


def _grad_input_bwd(residual, cotangent):
    # <cotangent, grad_input(kernel, g)> = <conv(cotangent, kernel), g>
    kernel, g = residual
    return _grad_kernel(cotangent, g, kernel.shape[:2]), _conv_same(cotangent, kernel)


_grad_input.defvjp(_grad_input_fwd, _grad_input_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _grad_kernel(x: jax.Array, g: jax.Array, kernel_size: KernelSize) -> jax.Array:
    """Kernel gradient of :func:`_conv_same`.

    ``(B, H, W, C_in)`` input, ``(B, H, W, C_out)`` output gradient -> ``(kh, kw, C_in, C_out)``.
    """
    return _kernel_gradient(tuple(kernel_size))(x, g)


def _grad_kernel_fwd(x, g, kernel_size):
    return _grad_kernel(x, g, kernel_size), (x, g)


def _grad_kernel_bwd(kernel_size, residual, cotangent):
    # <cotangent, grad_kernel(x, g)> = <conv(x, cotangent), g>
    del kernel_size
    x, g = residual
    return _grad_input(cotangent, g), _conv_same(x, cotangent)


_grad_kernel.defvjp(_grad_kernel_fwd, _grad_kernel_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``SAME``-padded 2-d convolution of NHWC inputs with an HWIO kernel.

    Args:
        x: ``(B, H, W, C_in)``.
        kernel: ``(kh, kw, C_in, C_out)``.
        stride: spatial stride; stride 1 uses the loop- and vmap-friendly gradients and
            batching rules.

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
