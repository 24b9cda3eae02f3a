"""What the benchmark scripts (``scripts/bench_*.py``, ``scripts/ab_unf.py``) share.

:mod:`~lopt.bench.timing` (compiling, timing in alternating blocks, the allocator setting)
and :mod:`~lopt.bench.spaces` (the weight spaces the UNF benchmarks run on).
"""
