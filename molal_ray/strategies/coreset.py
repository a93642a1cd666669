"""CoreSet (Sener & Savarese, 2018): k-center greedy on the classifier's embeddings.

Each pick is the candidate farthest from its nearest center (labeled samples and earlier picks),
so the labeled set covers the embedding space. One pass of distance updates per pick.
"""

from __future__ import annotations

import numpy as np

from molal_ray.strategies.base import PoolView, QueryStrategy


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


class CoreSet(QueryStrategy):
    name = "coreset"
    requires = ("embeddings",)

    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        x = np.asarray(view.embeddings, dtype=np.float64)
        if view.labeled_embeddings is not None and len(view.labeled_embeddings):
            lab = np.asarray(view.labeled_embeddings, dtype=np.float64)
            nearest = np.full(len(x), np.inf)
            for i in range(0, len(lab), 1024):
                nearest = np.minimum(nearest, _sq_dist(x, lab[i:i + 1024]).min(1))
            first = None
        else:
            first = int(rng.integers(len(x)))
            nearest = _sq_dist(x, x[first:first + 1])[:, 0]
        picks = [] if first is None else [first]
        while len(picks) < n:
            nearest_masked = nearest.copy()
            nearest_masked[picks] = -1.0
            j = int(np.argmax(nearest_masked))
            picks.append(j)
            nearest = np.minimum(nearest, _sq_dist(x, x[j:j + 1])[:, 0])
        return np.asarray(picks[:n])
