"""Benchmarks: one entry point, ``python -m bench`` (``make bench``), printing tables."""
