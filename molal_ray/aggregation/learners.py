"""Shared pieces of the learned aggregators: features for linear models, class remapping."""

from __future__ import annotations

import numpy as np

from molal_ray.aggregation.features import AnnotationMatrix

PROB_FLOOR = 1e-4


def linear_features(m: AnnotationMatrix) -> np.ndarray:
    """[log p, votes] per annotator plus a presence flag; an absent annotator's values are set to
    the uninformative ones (uniform log p, no votes) and its flag to 0, so it is neither dropped
    nor mistaken for a confident zero."""
    S, A, C = m.probs.shape
    logp = np.log(np.clip(np.nan_to_num(m.probs, nan=1.0 / C), PROB_FLOOR, 1.0))
    votes = np.nan_to_num(m.votes, nan=0.0)
    return np.concatenate([logp.reshape(S, A * C), votes.reshape(S, A * C), m.present.astype(np.float64)], axis=1)


def padded_proba(model, X: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """``predict_proba`` of a model fitted on a subset of the classes, as (S, C)."""
    out = np.zeros((len(X), num_classes))
    out[:, classes] = model.predict_proba(X)
    return out
