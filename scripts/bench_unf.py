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
from collections.abc import Callable

import jax

import lopt.nf as nf
from lopt.bench.spaces import CHANNELS, SPACES, WIDTHS, features_for, is_shape
from lopt.bench.timing import (
    add_allocator_option,
    compile_pair,
    jax_platform,
    measure,
    set_allocator,
)
from lopt.nf.reference import per_term_apply


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
            for s in jax.tree_util.tree_leaves(shapes, is_leaf=is_shape)
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
