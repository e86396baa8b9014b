"""Benchmarks, run on demand (`make bench`, `python -m bench.profile`); never part of the tests."""
