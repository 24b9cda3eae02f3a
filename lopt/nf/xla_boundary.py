"""Fusion boundaries: values XLA computes once into a buffer instead of once per reader.

XLA fuses a cheap elementwise producer into every consumer that reads it in another
shape, so a value read in several shapes is recomputed once per reading, in strided
loops. The functions here are identities that XLA cannot see through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_batching.custom_vmap
def computed_once(x: Array) -> Array:
    """``x``, as one buffer that every reader shares (see :func:`materialize`).

    A ``cond`` on a predicate XLA cannot evaluate at compile time is a boundary it does
    not fuse across: the operand is computed once, into a buffer. The predicate (an entry
    of ``x`` above +inf) is never true, so the result is always ``x``; the other branch
    only has to differ from the identity, or XLA would drop the ``cond``.

    Args:
        x: any array.

    Returns:
        ``x``, same shape and dtype.
    """
    if x.size == 0:
        return x
    never = x.reshape(-1)[0] > jnp.inf
    return jax.lax.cond(never, lambda v: jnp.full_like(v, jnp.nan), lambda v: v, x)


@computed_once.def_vmap
def _computed_once_vmap(axis_size: int, in_batched: list[bool], x: Array) -> tuple[Array, bool]:
    # vmap turns a cond on a batched predicate into a select, which XLA fuses through;
    # the whole batch is one buffer here, so one unbatched predicate serves it
    del axis_size
    return computed_once(x), in_batched[0]


@jax.custom_vjp
def materialize(x: Array) -> Array:
    """``x``, computed once, and its cotangent too.

    A layer's input is read in several shapes (one per axis it is reduced over, and flat
    for the full-size matmul). XLA's CPU fusion copies a cheap elementwise producer (the
    previous layer's sum of broadcasts and activation) into every consumer of another
    shape, so without this the previous layer's output is recomputed once per reading, in
    strided loops. A ``cond`` is the cheapest boundary that XLA keeps (a product with an
    identity matrix also works, at the cost of the product).

    Args:
        x: any array.

    Returns:
        ``x``, same shape and dtype.
    """
    return computed_once(x)


def _materialize_fwd(x: Array) -> tuple[Array, None]:
    return computed_once(x), None


def _materialize_bwd(residual: None, g: Array) -> tuple[Array]:
    del residual
    return (computed_once(g),)


materialize.defvjp(_materialize_fwd, _materialize_bwd)


SHARED_SIZE = 1 << 16
"""Entries from which a reduction is computed into one shared buffer (see
:func:`~lopt.nf.ops.all_reductions`). Large reductions (a conv kernel's over a spatial axis
reaches 400,000 entries on the CNN weight space) are cheaper to read from one buffer than
to recompute per reader; copies of small reductions cost little, while every boundary is
one more kernel to run and compile."""


def materialize_if_large(x: Array) -> Array:
    """:func:`materialize` for arrays of at least :data:`SHARED_SIZE` entries, else ``x``."""
    return materialize(x) if x.size >= SHARED_SIZE else x


def computed_once_if_large(x: Array) -> Array:
    """:func:`computed_once` for arrays of at least :data:`SHARED_SIZE` entries, else ``x``."""
    return computed_once(x) if x.size >= SHARED_SIZE else x
