"""Benchmarks run by ``gdet bench`` / ``tools/bench.py``: each module has a click command ``main`` that prints a
table."""
