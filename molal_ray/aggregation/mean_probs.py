"""Mean of the annotators' label probabilities."""

from __future__ import annotations

import numpy as np

from molal_ray.aggregation.base import Aggregator, normalise_rows
from molal_ray.aggregation.features import AnnotationMatrix


class MeanProbs(Aggregator):
    name = "mean-probs"
    uses_gold = False

    def predict_proba(self, m: AnnotationMatrix) -> np.ndarray:
        return normalise_rows(np.nansum(m.probs, axis=1))
