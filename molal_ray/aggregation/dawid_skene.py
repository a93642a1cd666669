"""Dawid-Skene: EM over each annotator's confusion matrix (Dawid & Skene, 1979).

Each annotator's answer for a sample is its vote distribution (shares of its T samples), used as
a soft answer. Starts from majority vote; gold labels are fixed to their class in every E-step
and count ``gold_weight`` times in the M-step. Absent annotators contribute no evidence.
"""

from __future__ import annotations

import numpy as np

from molal_ray.aggregation.base import Aggregator, Gold, normalise_rows
from molal_ray.aggregation.features import AnnotationMatrix


def _posterior(X: np.ndarray, log_conf: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    # log p(k | answers) = log prior_k + sum_a sum_l X[i,a,l] log conf[a,k,l]
    lg = log_prior[None, :] + np.einsum("ial,akl->ik", X, log_conf, optimize=True)
    lg -= lg.max(1, keepdims=True)
    T = np.exp(lg)
    return T / T.sum(1, keepdims=True)


def fit_dawid_skene(
    X: np.ndarray, gold: Gold, *, gold_weight: float, smoothing: float, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """EM on soft answers X (S, A, C) with NaN absent. Returns (log confusions, log prior, history)."""
    Xn = np.nan_to_num(X.astype(np.float64))
    S, A, C = Xn.shape
    T = normalise_rows(Xn.sum(1))
    w = np.ones(S)
    w[gold.index] = gold_weight
    history: list[float] = []
    log_conf = np.zeros((A, C, C))
    log_prior = np.full(C, -np.log(C))
    for _ in range(max_iter):
        T[gold.index] = gold.one_hot()
        Tw = T * w[:, None]
        prior = Tw.sum(0) + 1.0
        log_prior = np.log(prior / prior.sum())
        conf = np.einsum("ik,ial->akl", Tw, Xn, optimize=True) + smoothing * np.eye(C)[None] + 1e-2
        log_conf = np.log(conf / conf.sum(2, keepdims=True))
        T_new = _posterior(Xn, log_conf, log_prior)
        change = float(np.abs(T_new - T).max())
        history.append(change)
        T = T_new
        if change < tol:
            break
    return log_conf, log_prior, history


class DawidSkene(Aggregator):
    name = "dawid-skene"

    def __init__(
        self, gold_weight: float = 20.0, smoothing: float = 1.0, max_iter: int = 100, tol: float = 1e-4
    ) -> None:
        self.gold_weight = gold_weight
        self.smoothing = smoothing
        self.max_iter = max_iter
        self.tol = tol

    def _fit(self, m: AnnotationMatrix, gold: Gold) -> None:
        self.annotators_ = list(m.annotators)
        self.log_conf_, self.log_prior_, self.history_ = fit_dawid_skene(
            m.votes, gold, gold_weight=self.gold_weight, smoothing=self.smoothing, max_iter=self.max_iter, tol=self.tol
        )

    def predict_proba(self, m: AnnotationMatrix) -> np.ndarray:
        # An annotator unseen at fit time has no confusion estimate: it is dropped; one seen then
        # and absent now has no votes: it contributes nothing.
        X = np.nan_to_num(m.aligned(self.annotators_).votes.astype(np.float64))
        return _posterior(X, self.log_conf_, self.log_prior_)

    def confusions(self) -> np.ndarray:
        return np.exp(self.log_conf_)
