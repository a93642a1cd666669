"""BEMPS with the mean-squared-error score (CoreMSE; Tan, Du & Buntine, NeurIPS 2021), the
strategy of the paper's ``trainALC``.

The posterior over models is represented by K classifiers (the loop's noise-perturbed copies,
``noisy_probs``), uniform at first. Querying x and observing y reweights them by p_k(y | x). The
score of x is the expected drop, over y ~ p(y | x), of the posterior expected MSE of the
predictive distribution on an estimation set X' (a random subset of the candidates):

    Q(w) = sum_{x' in X'} sum_c [ sum_k w_k p_k(c|x')^2 - (sum_k w_k p_k(c|x'))^2 ]
         = w . a - w^T G w,  a_k = sum p_k^2,  G_kl = sum p_k p_l

so every (x, y) costs O(K^2) after one pass over X'.
"""

from __future__ import annotations

import numpy as np

from molal_ray.strategies.base import PoolView, ScoreStrategy


class BEMPS(ScoreStrategy):
    name = "bemps"
    requires = ("noisy_probs",)
    per_row = False  # a candidate's score depends on the estimation set drawn from all of them

    def __init__(self, estimation_set: int = 1000) -> None:
        self.estimation_set = estimation_set

    def scores(self, view: PoolView, rng: np.random.Generator) -> np.ndarray:
        P = np.asarray(view.noisy_probs, dtype=np.float64)  # (K, N, C)
        K, N, C = P.shape
        est = rng.choice(N, min(self.estimation_set, N), replace=False)
        Pe = P[:, est, :].reshape(K, -1)
        a = (Pe * Pe).sum(1)
        G = Pe @ Pe.T
        w0 = np.full(K, 1.0 / K)
        q0 = w0 @ a - w0 @ G @ w0
        like = np.transpose(P, (1, 2, 0))  # (N, C, K): p_k(y | x)
        py = like.mean(2)  # (N, C): p(y | x) under the current posterior
        W = like / np.maximum(like.sum(2, keepdims=True), 1e-300)
        q = W @ a - np.einsum("nck,kl,ncl->nc", W, G, W)
        return (py * (q0 - q)).sum(1)
