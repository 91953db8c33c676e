"""Benchmark material of `./dev bench` (devkit/bench/): the baseline service, the TypeScript
twins (ts/), the method and findings (README.md) and the latest results."""
