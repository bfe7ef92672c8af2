"""Benchmark scripts (each runnable with ``python -m pipelines.benchmarks.<name>``)."""
