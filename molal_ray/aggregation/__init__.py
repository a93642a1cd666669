"""Aggregators: many noisy annotators -> one label distribution per sample (no Ray inside)."""

from molal_ray.aggregation.api import AggregationResult, aggregate, load_gold, load_labels
from molal_ray.aggregation.base import Aggregator, Gold, available, get_aggregator
from molal_ray.aggregation.features import AnnotationMatrix, build_matrix

__all__ = [
    "AggregationResult",
    "Aggregator",
    "AnnotationMatrix",
    "Gold",
    "aggregate",
    "available",
    "build_matrix",
    "get_aggregator",
    "load_gold",
    "load_labels",
]
