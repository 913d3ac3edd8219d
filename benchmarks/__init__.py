"""Benchmarks (not tests): figures with their baselines measured in the same run. ``python -m benchmarks``."""
