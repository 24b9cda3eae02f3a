"""A/B benchmark: the working tree's UNF layers against those of a git revision, in one process.

Separate benchmark runs on a shared machine differ by up to ±25% even in their ratios, which
hides changes of a few percent. This script imports the package ``lopt/nf`` twice (as
committed at ``--baseline`` and as in the working tree, each under its own package name),
compiles the same 4-layer UNF with each and a Deep Sets network of the same widths, and
times all of them in alternating blocks of calls in one process, so load from other
processes hits both sides alike.

    python scripts/ab_unf.py                          # working tree vs HEAD, all spaces
    python scripts/ab_unf.py --baseline main~3 --spaces cnn transformer --blocks 20
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

import lopt.nf as nf
from lopt.bench.spaces import CHANNELS, SPACES, WIDTHS, features_for
from lopt.bench.timing import add_allocator_option, compile_pair, measure, set_allocator

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lopt/nf"


def package_sources(revision: str | None) -> dict[str, str]:
    """``file name -> text`` of the ``lopt/nf`` modules at ``revision`` (None: working tree)."""
    if revision is None:
        return {p.name: p.read_text() for p in sorted((ROOT / PACKAGE).glob("*.py"))}
    listed = git("ls-tree", "--name-only", f"{revision}:{PACKAGE}")
    return {
        name: git("show", f"{revision}:{PACKAGE}/{name}")
        for name in listed.split()
        if name.endswith(".py")
    }


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def load_package(sources: dict[str, str], name: str, directory: Path):
    """Imports ``sources`` as the package ``name``: its own imports of ``lopt.nf`` point to it."""
    package = directory / name
    package.mkdir()
    for file_name, text in sources.items():
        (package / file_name).write_text(re.sub(r"\blopt\.nf\b", name, text))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    return importlib.import_module(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against")
    parser.add_argument("--spaces", nargs="*", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--blocks", type=int, default=12, help="alternating blocks of 5 calls")
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = set_allocator(args)
    directory = Path(tempfile.mkdtemp(prefix="ab_unf_"))
    layers = {
        "baseline": load_package(package_sources(args.baseline), "nf_baseline", directory),
        "working": load_package(package_sources(None), "nf_working", directory),
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
