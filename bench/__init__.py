"""Benchmarks; results are recorded in docs/benchmarks.md."""
