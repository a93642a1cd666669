"""Helpers for tests and benchmarks (synthetic annotation tables, tiny models)."""
