"""Noise stability (Li et al., 2024, "Deep Active Learning via Noise Stability"): a sample whose
prediction moves most when small random noise is added to the classifier's weights is the most
uncertain. The loop computes ``noisy_probs`` (K perturbed copies); the score is the mean L2
distance of their outputs from the clean output."""

from __future__ import annotations

import numpy as np

from molal_ray.strategies.base import PoolView, ScoreStrategy


class NoiseStability(ScoreStrategy):
    name = "noise-stability"
    requires = ("probs", "noisy_probs")

    def scores(self, view: PoolView, rng: np.random.Generator) -> np.ndarray:
        diff = np.asarray(view.noisy_probs) - np.asarray(view.probs)[None]
        return np.linalg.norm(diff, axis=2).mean(0)
