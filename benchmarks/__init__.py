"""The performance benchmarks of issue 5, one module per benchmark.

``run.py`` is the command line (``python benchmarks/run.py [--quick] [--only NAME ...]``);
``harness`` times and reports, ``memory`` measures peak resident memory, ``models`` builds the
benchmarked models and prompts, and ``attention``, ``nnsight_overhead`` and ``sweep`` are the
three benchmarks. Not part of the installed ``interp`` package.
"""
