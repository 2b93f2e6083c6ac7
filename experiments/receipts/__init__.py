"""Receipts: one-off investigations RESULTS.md, subactions.md or teacher_health.md cite (experiments/INDEX.md)."""
