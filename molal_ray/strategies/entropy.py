"""Maximum entropy of the classifier's predicted distribution (uncertainty sampling)."""

from __future__ import annotations

import numpy as np

from molal_ray.strategies.base import PoolView, ScoreStrategy


class MaxEntropy(ScoreStrategy):
    name = "max-entropy"
    requires = ("probs",)

    def scores(self, view: PoolView, rng: np.random.Generator) -> np.ndarray:
        p = np.clip(view.need("probs"), 1e-12, 1.0)
        return -(p * np.log(p)).sum(1)
