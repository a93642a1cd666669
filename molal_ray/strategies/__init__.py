"""Query strategies, one class per file, registered by name."""

from molal_ray.strategies.base import (
    PoolView,
    QueryStrategy,
    ScoreStrategy,
    SubsamplingQueryStrategy,
    available,
    get_strategy,
)

__all__ = ["PoolView", "QueryStrategy", "ScoreStrategy", "SubsamplingQueryStrategy", "available", "get_strategy"]
