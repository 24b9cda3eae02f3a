"""A/B benchmark: the working tree's UNF layers against those of a git revision, in one process.

Separate benchmark runs on a shared machine differ by up to ±25% even in their ratios, which
hides changes of a few percent. This script loads ``lopt/nf/layers.py`` twice (as committed
at ``--baseline`` and as in the working tree), compiles the same 4-layer UNF with each and
a Deep Sets network of the same widths, and times all of them in alternating blocks of calls
in one process, so load from other processes hits both sides alike.

Only ``layers.py`` is swapped: the other modules of ``lopt.nf`` must be the same in both
(checked; the script stops with a message if they differ).

    python scripts/ab_unf.py                          # working tree vs HEAD, all spaces
    python scripts/ab_unf.py --baseline main~3 --spaces cnn transformer --blocks 20
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import jax
from bench_unf import (
    CHANNELS,
    SPACES,
    WIDTHS,
    add_allocator_option,
    compile_pair,
    features_for,
    measure,
    set_allocator,
)

import lopt.nf as nf

ROOT = Path(__file__).resolve().parent.parent
LAYERS = "lopt/nf/layers.py"


def committed(revision: str, path: str) -> str:
    """The text of ``path`` at ``revision``."""
    result = subprocess.run(
        ["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"cannot read {path} at {revision!r}: {result.stderr.strip()}")
    return result.stdout


def check_same_dependencies(revision: str) -> None:
    """Stops unless every ``lopt/nf`` module but ``layers.py`` matches ``revision``."""
    for path in sorted((ROOT / "lopt" / "nf").glob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative != LAYERS and committed(revision, relative) != path.read_text():
            raise SystemExit(
                f"{relative} differs from {revision}; this script swaps only {LAYERS}, "
                "so commit or stash the other change first"
            )


def load_module(source: str, name: str):
    """Imports ``source`` (the text of a layers module) as a module called ``name``."""
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclass machinery looks the module up by name
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against")
    parser.add_argument("--spaces", nargs="*", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--blocks", type=int, default=12, help="alternating blocks of 5 calls")
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = set_allocator(args)
    check_same_dependencies(args.baseline)
    layers = {
        "baseline": load_module(committed(args.baseline, LAYERS), "layers_baseline"),
        "working": load_module((ROOT / LAYERS).read_text(), "layers_working"),
    }
    print(f"jax {jax.__version__}; widths {CHANNELS}->{WIDTHS}; baseline {args.baseline}")
    print(f"allocator: {allocator}")
    print(f"{'space':12s}{'pass':>9s}{'baseline ms':>13s}{'working ms':>12s}{'working/base':>14s}")
    key = jax.random.PRNGKey(0)
    for space in args.spaces:
        spec, shapes = SPACES[space]()
        x = features_for(shapes, key)
        networks = {
            name: module.NeuralFunctional(spec, equivariant=WIDTHS)
            for name, module in layers.items()
        }
        networks["deepsets"] = nf.NeuralFunctional(spec, pointwise=WIDTHS)
        candidates = {}
        for name, network in networks.items():
            variables = jax.jit(network.init)(key, x)
            compiled, _ = compile_pair(network.apply, variables, x)
            candidates[name] = (compiled, variables)
        median = measure(candidates, x, 5 * args.blocks)
        for which in ("fwd", "fwd+bwd"):
            base, work, deepsets = (median[name][f"{which} run"] * 1e3 for name in networks)
            print(
                f"{space:12s}{which:>9s}{base:13.3f}{work:12.3f}{work / base:14.3f}"
                f"   (vs deepsets: {base / deepsets:.2f} -> {work / deepsets:.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
