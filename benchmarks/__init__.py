"""Benchmarks of fastmri_growth: what growth costs and what it buys.

Run everything with ``make bench`` (``python -m benchmarks.run_all``); add
``--quick`` for a short version. Each module exposes a ``run(...)`` function
returning a JSON-serialisable dict; ``run_all`` writes them to
``bench_output/`` and the tables to ``benchmarks/README.md``.
"""
