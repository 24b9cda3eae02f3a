"""Test-session setup shared by every test module.

JAX's persistent compilation cache: one directory per test run, shared by the xdist workers,
the in-process command-line runs and their subprocesses (through ``JAX_COMPILATION_CACHE_DIR``),
so a program that several tests build identically compiles once; validation's shared
reference Adams go in its ``references/`` folder. The tests never touch the user's own
caches (``~/.cache/lopt``). ``LOPT_TEST_JAX_CACHE=DIR`` keeps one directory
across runs instead, which makes a repeated run faster.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jax

KEEP_ACROSS_RUNS = "LOPT_TEST_JAX_CACHE"
# Set by the first process of a run (the xdist controller, or pytest without xdist); the
# workers it starts inherit it.
RUN_CACHE = "LOPT_TEST_RUN_JAX_CACHE"
_made_here: list[Path] = []


def pytest_configure(config):
    if os.environ.get(KEEP_ACROSS_RUNS):
        directory = Path(os.environ[KEEP_ACROSS_RUNS]).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
    elif os.environ.get(RUN_CACHE):
        directory = Path(os.environ[RUN_CACHE])
    else:
        directory = Path(tempfile.mkdtemp(prefix="lopt-tests-jax-"))
        _made_here.append(directory)
    os.environ[RUN_CACHE] = str(directory)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # Validation's shared reference Adams: per test run too, never the user's own.
    os.environ["LOPT_REFERENCE_CACHE_DIR"] = str(directory / "references")
    # The tests compose the tools' configs themselves, as their entry points do after this.
    from lopt.cli.eval import register_configs

    register_configs()


def pytest_unconfigure(config):
    for directory in _made_here:
        shutil.rmtree(directory, ignore_errors=True)
