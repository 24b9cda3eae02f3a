"""A tour of the UNF layers: build a permutation spec, an equivariant network, check it.

Run: ``python scripts/demo_unf.py``.
"""

import time

import jax
import jax.numpy as jnp

import lopt.nf as nf


def main() -> None:
    # An RNN-like weight space: the recurrent matrix carries the hidden id on both axes.
    spec = {
        "embed": (nf.ByChoice("vocab"), "h"),
        "recurrent": ("h", "h"),
        "bias": ("h",),
        "readout": ("h", nf.ByChoice("vocab")),
    }
    shapes = {"embed": (16, 8), "recurrent": (8, 8), "bias": (8,), "readout": (8, 16)}
    key = jax.random.PRNGKey(0)
    x = {
        name: jax.random.normal(jax.random.fold_in(key, i), (*shape, 3))
        for i, (name, shape) in enumerate(shapes.items())
    }

    plan = nf.plan_for(spec, x)
    for out, layout in enumerate(plan.tensors):
        counts = [plan.num_terms(out, inp) for inp in range(len(plan.tensors))]
        print(f"{layout.path:16s} ids={layout.ids!s:40s} basis terms per input: {counts}")

    net = nf.NeuralFunctional(spec, pointwise=(16,), equivariant=(16, 1))
    variables = jax.jit(net.init)(key, x)
    apply = jax.jit(net.apply)
    start = time.perf_counter()
    y = jax.block_until_ready(apply(variables, x))
    print(
        f"parameters: {sum(p.size for p in jax.tree_util.tree_leaves(variables)):,}; "
        f"first call {time.perf_counter() - start:.2f}s"
    )

    perms = nf.random_permutations(jax.random.PRNGKey(1), spec, x)
    moved = apply(variables, nf.permute(x, spec, perms))
    error = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree_util.tree_leaves(moved),
            jax.tree_util.tree_leaves(nf.permute(y, spec, perms)),
            strict=True,
        )
    )
    print(f"equivariance error under a random permutation: {error:.2e}")
    if error > 1e-4:
        raise SystemExit("the network is not equivariant")


if __name__ == "__main__":
    main()
