"""Temperature scaling of an aggregator's label distributions, fitted on gold out of fold.

A meta-learner self-trained on thousands of its own confident pseudo-labels becomes
overconfident: on TREC with 50 gold the uncalibrated default gives 0.98 mean confidence for 0.78
accuracy, and puts the true label under 5% on 19% of the rows, so the loop's "near-impossible"
negative labels would push the classifier away from the truth on those rows. One temperature
T (P ** (1/T), renormalised) is fitted by minimising the negative log-likelihood of gold labels
predicted by models that did not see them (K-fold on the gold set); the argmax, and so the
accuracy, does not change.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from molal_ray.aggregation.base import normalise_rows

EPS = 1e-12


def apply_temperature(p: np.ndarray, t: float) -> np.ndarray:
    logp = np.log(np.clip(p, EPS, 1.0)) / t
    logp -= logp.max(axis=1, keepdims=True)
    return normalise_rows(np.exp(logp))


def fit_temperature(p: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.25, 50.0)) -> float:
    """The T in ``bounds`` that minimises the mean negative log-likelihood of ``y`` under
    ``apply_temperature(p, T)``; 1.0 when there is nothing to fit on."""
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        q = apply_temperature(p, float(np.exp(log_t)))
        return float(-np.log(np.clip(q[np.arange(len(y)), y], EPS, 1.0)).mean())

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))
