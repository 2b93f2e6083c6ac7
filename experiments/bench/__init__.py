"""Benchmarks: speed and memory as ratios against another implementation in the same run (experiments/INDEX.md)."""
