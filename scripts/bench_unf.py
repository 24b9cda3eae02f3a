"""Benchmark: a 4-layer UNF against Deep Sets and the per-term reference, side by side.

For four weight spaces (MLP, CNN, identity-RNN LM, 2-block transformer LM) it measures the
compile time, the steady-state time and XLA's FLOP estimate of the forward pass and of
forward+backward for

* ``unf``: ``NeuralFunctional(equivariant=(32, 32, 32, 1))`` on 19 input channels;
* ``deepsets``: the same widths as per-parameter layers;
* ``per-term``: the same UNF function evaluated term by term (no shared reductions, one
  matmul per basis term), the direct reading of Algorithm 1.

The FLOP ratio is the work the maximal basis needs, whatever the implementation: every
basis term is a product of its reduced input with its own channel map (grouping terms by
output pattern concatenates these products, it removes none). Where both networks run at
the same FLOP rate it is a floor under the time ratio. On the transformer space, for one,
the terms that carry only the residual-stream axis form a ``1088 x 1088`` channel map per
32-channel layer, applied to each of the stream's 32 entries.

Run: ``python scripts/bench_unf.py [--repeats 20] [--skip-per-term]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import lopt.nf as nf
from lopt.nf.reference import per_term_apply

WIDTHS = (32, 32, 32, 1)
CHANNELS = 19


def mlp_space():
    sizes = [784, 32, 32, 10]
    ids = [nf.ByChoice("in"), "h1", "h2", nf.ByChoice("out")]
    spec, shapes = {}, {}
    for layer in range(3):
        name = f"Dense_{layer}"
        spec[name] = {"kernel": (ids[layer], ids[layer + 1]), "bias": (ids[layer + 1],)}
        shapes[name] = {"kernel": (sizes[layer], sizes[layer + 1]), "bias": (sizes[layer + 1],)}
    return spec, shapes


def cnn_space():
    channels = [3, 32, 64, 64]
    ids = [nf.ByChoice("image"), "c1", "c2", "c3"]
    spec, shapes = {}, {}
    for layer in range(3):
        name = f"Conv_{layer}"
        spec[name] = {
            "kernel": (
                nf.Spatial(f"{name}/h"),
                nf.Spatial(f"{name}/w"),
                ids[layer],
                ids[layer + 1],
            ),
            "bias": (ids[layer + 1],),
        }
        shapes[name] = {
            "kernel": (3, 3, channels[layer], channels[layer + 1]),
            "bias": (channels[layer + 1],),
        }
    spec["Dense_0"] = {"kernel": ("c3", nf.ByChoice("class")), "bias": (nf.ByChoice("class"),)}
    shapes["Dense_0"] = {"kernel": (64, 10), "bias": (10,)}
    return spec, shapes


def rnn_space():
    vocab = nf.ByChoice("vocab")
    spec = {
        "embed": (vocab, "e"),
        "input": ("e", "h"),
        "recurrent": ("h", "h"),
        "bias": ("h",),
        "readout": {"kernel": ("h", vocab), "bias": (vocab,)},
    }
    shapes = {
        "embed": (256, 64),
        "input": (64, 128),
        "recurrent": (128, 128),
        "bias": (128,),
        "readout": {"kernel": (128, 256), "bias": (256,)},
    }
    return spec, shapes


def transformer_space(d=32, heads=4, head_dim=8, mlp=128, vocab=256, seq=8, blocks=2):
    spec = {"embed": (nf.ByChoice("vocab"), "d"), "pos": (None, "d")}
    shapes = {"embed": (vocab, d), "pos": (seq, d)}
    for b in range(blocks):
        h, qk, v, f = f"{b}/heads", f"{b}/qk", f"{b}/v", f"{b}/mlp"
        spec[f"block_{b}"] = {
            "ln1": {"scale": ("d",), "bias": ("d",)},
            "query": (("d", h, qk)),
            "key": ("d", h, qk),
            "value": ("d", h, v),
            "out": (h, v, "d"),
            "ln2": {"scale": ("d",), "bias": ("d",)},
            "mlp_in": {"kernel": ("d", f), "bias": (f,)},
            "mlp_out": {"kernel": (f, "d"), "bias": ("d",)},
        }
        shapes[f"block_{b}"] = {
            "ln1": {"scale": (d,), "bias": (d,)},
            "query": (d, heads, head_dim),
            "key": (d, heads, head_dim),
            "value": (d, heads, head_dim),
            "out": (heads, head_dim, d),
            "ln2": {"scale": (d,), "bias": (d,)},
            "mlp_in": {"kernel": (d, mlp), "bias": (mlp,)},
            "mlp_out": {"kernel": (mlp, d), "bias": (d,)},
        }
    spec["ln_f"] = {"scale": ("d",), "bias": ("d",)}
    shapes["ln_f"] = {"scale": (d,), "bias": (d,)}
    spec["readout"] = ("d", nf.ByChoice("vocab"))
    shapes["readout"] = (d, vocab)
    return spec, shapes


SPACES = {"mlp": mlp_space, "cnn": cnn_space, "rnn": rnn_space, "transformer": transformer_space}


def features_for(shapes, key):
    is_shape = lambda s: isinstance(s, tuple) and all(isinstance(n, int) for n in s)
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=is_shape)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, (*s, CHANNELS)) for k, s in zip(keys, leaves, strict=True)]
    )


def per_term_network(spec) -> Callable:
    def apply(variables, x):
        params = variables["params"]
        last = len(WIDTHS) - 1
        for index, width in enumerate(WIDTHS):
            x = per_term_apply(spec, params[f"equivariant_{index}"], x, width)
            if index < last:
                x = jax.tree_util.tree_map(jax.nn.relu, x)
        return x

    return apply


def xla_gflop(executable) -> float:
    """XLA's static estimate of a compiled executable's work, in GFLOP.

    Its bytes-accessed estimate is left out: it counts every operand of an instruction
    whole, so each of the layer's fusion boundaries (:func:`lopt.nf.xla_boundary.computed_once`,
    a ``cond`` whose predicate reads one entry) would count as a full pass over the tensor.
    """
    analysis = executable.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device program
        analysis = analysis[0] if analysis else {}
    return (analysis or {}).get("flops", math.nan) / 1e9


def compile_pair(apply, variables, x):
    """Compiles forward and forward+backward.

    Returns:
        The executables by pass, and per pass its compile seconds and XLA's estimate of its
        work (``"<pass> compile"``, ``"<pass> GFLOP"``).
    """

    def loss(v, inputs):
        return sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(apply(v, inputs)))

    compiled, stats = {}, {}
    for name, fn in (("fwd", apply), ("fwd+bwd", jax.grad(loss))):
        start = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(variables, x).compile()
        stats[f"{name} compile"] = time.perf_counter() - start
        stats[f"{name} GFLOP"] = xla_gflop(compiled[name])
        jax.block_until_ready(compiled[name](variables, x))
    return compiled, stats


def measure(candidates, x, repeats):
    """Steady-state seconds of every candidate, timed in alternating blocks of calls.

    Alternating blocks let machine load hit every candidate alike.

    Args:
        candidates: name -> (compiled executables by pass, variables).
        x: the input.
        repeats: timed calls per candidate and pass.

    Returns:
        name -> pass -> median seconds.
    """
    times = {name: {"fwd": [], "fwd+bwd": []} for name in candidates}
    block = 5  # calls in a row, so one candidate's working set does not start each timing cold
    for _ in range(max(repeats // block, 1)):
        for name, (compiled, variables) in candidates.items():
            for which, fn in compiled.items():
                for _ in range(block):
                    start = time.perf_counter()
                    jax.block_until_ready(fn(variables, x))
                    times[name][which].append(time.perf_counter() - start)
    return {
        name: {f"{which} run": statistics.median(values) for which, values in passes.items()}
        for name, passes in times.items()
    }


# glibc's malloc maps a block above its mmap threshold (at most 32 MiB), and any block too
# large for a worker thread's arena (64 MiB), fresh with mmap and unmaps it when freed. XLA
# frees a call's temporaries when the call ends, so every call of a program with large
# temporaries page-faults all of them in again: on the CNN space, 21,700 faults per UNF
# forward+backward (an 88.8 MB temporary buffer) and 13,600 per Deep Sets one, whose
# forward+backward ran 1.7-2.3x faster without them. These settings keep freed memory in
# the heap, so the timings measure the computation, not the kernel zero-filling pages.
# glibc reads them at process start only.
REUSE_FREED_MEMORY = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
}


def add_allocator_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="time with glibc's malloc as configured by the environment, not with freed "
        "memory kept for reuse (large temporaries are then page-faulted in on every call)",
    )


def set_allocator(args: argparse.Namespace) -> str:
    """Restarts the process with freed memory kept for reuse, unless asked not to.

    Call it before any JAX computation. Returns the allocator setting in words.
    """
    if args.default_allocator:
        return "as the environment sets it"
    missing = {k: v for k, v in REUSE_FREED_MEMORY.items() if os.environ.get(k) != v}
    if missing:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})
    return (
        "freed memory kept for reuse ("
        + " ".join(f"{k}={v}" for k, v in REUSE_FREED_MEMORY.items())
        + "); XLA compiles 20-60% slower with one arena, --default-allocator times "
        "compiles as a program run without these settings sees them"
    )


def parse_timing_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The command line's arguments, with ``--default-allocator`` among the options.

    Sets the allocator (:func:`set_allocator`, so call it before any JAX computation) and
    prints the setting.
    """
    add_allocator_option(parser)
    args = parser.parse_args()
    print(f"allocator: {set_allocator(args)}")
    return args


def jax_platform() -> str:
    """``jax <version> on <platform>``: what the timings were measured with."""
    return f"jax {jax.__version__} on {jax.devices()[0].platform}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-per-term", action="store_true")
    parser.add_argument("--spaces", nargs="*", default=list(SPACES))
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = set_allocator(args)
    key = jax.random.PRNGKey(0)
    print(f"{jax_platform()}; widths {CHANNELS}->{WIDTHS}")
    print(f"allocator: {allocator}")
    rows = []
    for space in args.spaces:
        spec, shapes = SPACES[space]()
        x = features_for(shapes, key)
        nets = {
            "unf": nf.NeuralFunctional(spec, equivariant=WIDTHS),
            "deepsets": nf.NeuralFunctional(spec, pointwise=WIDTHS),
        }
        stats, counts, candidates = {}, {}, {}
        for name, net in nets.items():
            variables = jax.jit(net.init)(key, x)
            counts[name] = sum(p.size for p in jax.tree_util.tree_leaves(variables))
            compiled, stats[name] = compile_pair(net.apply, variables, x)
            candidates[name] = (compiled, variables)
            if name == "unf" and not args.skip_per_term:
                compiled, stats["per-term"] = compile_pair(per_term_network(spec), variables, x)
                candidates["per-term"] = (compiled, variables)
        for name, runs in measure(candidates, x, args.repeats).items():
            stats[name].update(runs)
        entries = sum(
            s[0] if len(s) == 1 else math.prod(s)
            for s in jax.tree_util.tree_leaves(
                shapes,
                is_leaf=lambda s: isinstance(s, tuple) and all(isinstance(n, int) for n in s),
            )
        )
        rows.append((space, entries, counts, stats))
        print(
            f"\n== {space}: {entries:,} weights; params unf {counts['unf']:,}, "
            f"deepsets {counts['deepsets']:,}"
        )
        header = f"{'':24s}" + "".join(f"{name:>12s}" for name in stats)
        print(header)
        for which in ("fwd", "fwd+bwd"):
            for metric, unit, scale in (
                ("compile", "s", 1.0),
                ("run", "ms", 1e3),
                ("GFLOP", "", 1.0),
            ):
                label = f"{which} {metric}" + (f" ({unit})" if unit else "")
                print(
                    f"{label:24s}"
                    + "".join(f"{stats[name][f'{which} {metric}'] * scale:12.3f}" for name in stats)
                )

    print("\n== ratios (unf / deepsets; per-term / unf)")
    print(
        "time: steady-state run time; FLOPs: XLA's estimate, the work the maximal basis "
        "itself needs,\na floor under the time ratio while both networks run at the same "
        "FLOP rate"
    )
    print(
        f"{'space':12s}{'fwd':>8s}{'fwd+bwd':>9s}{'FLOPs fwd':>11s}{'FLOPs f+b':>11s}"
        f"{'compile f+b (s)':>17s}"
        f"{'per-term fwd':>14s}{'per-term f+b':>14s}{'per-term compile':>18s}"
    )
    for space, _, _, stats in rows:
        unf, ds, pt = stats["unf"], stats["deepsets"], stats.get("per-term")
        line = (
            f"{space:12s}{unf['fwd run'] / ds['fwd run']:8.2f}"
            f"{unf['fwd+bwd run'] / ds['fwd+bwd run']:9.2f}"
            f"{unf['fwd GFLOP'] / ds['fwd GFLOP']:11.2f}"
            f"{unf['fwd+bwd GFLOP'] / ds['fwd+bwd GFLOP']:11.2f}"
            f"{unf['fwd+bwd compile']:17.2f}"
        )
        if pt:
            line += (
                f"{pt['fwd run'] / unf['fwd run']:14.2f}"
                f"{pt['fwd+bwd run'] / unf['fwd+bwd run']:14.2f}"
                f"{pt['fwd+bwd compile'] / unf['fwd+bwd compile']:18.2f}"
            )
        print(line)


if __name__ == "__main__":
    main()
