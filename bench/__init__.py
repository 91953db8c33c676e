"""Benchmark material of `./dev bench` (devkit/bench.py): the baseline service and results."""
