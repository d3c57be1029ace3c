"""Benchmarks run by hand (`python -m benchmarks.speed`), not by the test suite."""
