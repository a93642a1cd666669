"""Random sampling: the baseline every strategy must beat."""

from __future__ import annotations

import numpy as np

from molal_ray.strategies.base import PoolView, QueryStrategy


class RandomSampling(QueryStrategy):
    name = "random"
    model_free = True

    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(view), n, replace=False)
