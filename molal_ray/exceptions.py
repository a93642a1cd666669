"""The project's own exceptions. Messages read: what / got / expected."""

from __future__ import annotations


class MolalError(Exception):
    """Base class of every error molal_ray raises on purpose."""


class ConfigError(MolalError, ValueError):
    """A configuration value is wrong (raised at load time, with the field's path)."""


class SchemaError(MolalError, ValueError):
    """A table (pool, annotation table, gold file) lacks a column or holds bad values."""


class AnnotatorError(MolalError, RuntimeError):
    """An annotator (engine or deployment) failed to start or to answer."""


class PoolExhaustedError(MolalError, ValueError):
    """A query asked for more samples than the unlabeled pool holds."""

    def __init__(self, available: int, requested: int) -> None:
        super().__init__(f"Pool exhausted: {available} available / {requested} requested")
        self.available = available
        self.requested = requested


class AggregationError(MolalError, ValueError):
    """Aggregation cannot proceed with the given table and gold labels."""


class TrainingError(MolalError, RuntimeError):
    """Training the classifier failed (bad training rows, or its workers ended)."""
