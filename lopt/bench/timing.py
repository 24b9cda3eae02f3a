"""Timing compiled JAX programs on a shared machine, as the benchmark scripts do.

* :func:`compile_pair` compiles a network's forward and forward+backward pass and records
  their compile time and XLA's FLOP estimate (:func:`xla_gflop`; :func:`xla_gbytes` reads
  its bytes-accessed estimate);
* :func:`measure` times several compiled candidates in alternating blocks of calls, so that
  load from other processes hits them alike;
* :func:`parse_timing_args` adds ``--default-allocator`` to a script's options and, unless
  it is given, restarts the process with glibc's allocator set to keep freed memory
  (:data:`REUSE_FREED_MEMORY`);
* :func:`jax_platform` names what the timings were measured with.

>>> args = parse_timing_args(argparse.ArgumentParser())   # before any JAX computation
>>> compiled, stats = compile_pair(network.apply, variables, x)
>>> medians = measure({"unf": (compiled, variables)}, x, repeats=20)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def xla_cost_analysis(executable: Any) -> dict[str, float]:
    """XLA's static cost analysis of a compiled executable (empty where there is none).

    Older jax returns one dict per device program, some backends ``None`` or raise.
    """
    try:
        analysis = executable.cost_analysis()
    except (NotImplementedError, RuntimeError):
        return {}
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device program
        analysis = analysis[0] if analysis else {}
    return dict(analysis or {})


def xla_gflop(executable: Any) -> float:
    """XLA's static estimate of a compiled executable's work, in GFLOP (NaN if none).

    Its bytes-accessed estimate is left out: it counts every operand of an instruction
    whole, so each of the layer's fusion boundaries (:func:`lopt.nf.xla_boundary.computed_once`,
    a ``cond`` whose predicate reads one entry) would count as a full pass over the tensor.
    """
    return xla_cost_analysis(executable).get("flops", math.nan) / 1e9


def xla_gbytes(executable: Any) -> float:
    """XLA's bytes-accessed estimate of a compiled executable, in GB (NaN if none).

    An upper bound more than a measure for the :mod:`lopt.nf` networks (see
    :func:`xla_gflop`): each fusion boundary counts its operands whole.
    """
    return xla_cost_analysis(executable).get("bytes accessed", math.nan) / 1e9


def compile_pair(
    apply: Callable[[Any, Any], Any], variables: Any, x: Any
) -> tuple[dict[str, Any], dict[str, float]]:
    """Compiles forward and forward+backward of ``apply(variables, x)``.

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


def measure(
    candidates: dict[str, tuple[dict[str, Any], Any]], x: Any, repeats: int
) -> dict[str, dict[str, float]]:
    """Steady-state seconds of every candidate, timed in alternating blocks of calls.

    Alternating blocks let machine load hit every candidate alike.

    Args:
        candidates: name -> (compiled executables by pass, variables); each executable is
            called as ``fn(variables, x)``. Any pass names (``"fwd"``, ``"fwd+bwd"`` from
            :func:`compile_pair`), and candidates may have different passes.
        x: the input.
        repeats: timed calls per candidate and pass.

    Returns:
        name -> ``"<pass> run"`` -> median seconds.
    """
    times = {name: {which: [] for which in compiled} for name, (compiled, _) in candidates.items()}
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
    """Adds ``--default-allocator`` (read by :func:`set_allocator`) to ``parser``."""
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
