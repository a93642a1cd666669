"""Majority vote over all the sampled answers of all annotators."""

from __future__ import annotations

import numpy as np

from molal_ray.aggregation.base import Aggregator, normalise_rows
from molal_ray.aggregation.features import AnnotationMatrix


class MajorityVote(Aggregator):
    """Share of every annotator's T samples per label (a tie keeps its split mass)."""

    name = "majority"
    uses_gold = False

    def predict_proba(self, m: AnnotationMatrix) -> np.ndarray:
        return normalise_rows(np.nansum(m.votes, axis=1))
