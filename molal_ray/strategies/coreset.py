"""CoreSet (Sener & Savarese, 2018): k-center greedy on the classifier's embeddings.

Each pick is the candidate farthest from its nearest center (labeled samples and earlier picks),
so the labeled set covers the embedding space. The distances are kept per block of candidates,
in the embeddings' own float32: memory is the embeddings plus one float per candidate, never an
N x N or N x dim float64 matrix; each pick costs one pass over the blocks.
"""

from __future__ import annotations

import numpy as np

from molal_ray.strategies.base import PoolView, QueryStrategy

BLOCK_ROWS = 16384


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(len(x), len(c)) squared distances, in x's dtype."""
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


class CoreSet(QueryStrategy):
    name = "coreset"
    requires = ("embeddings",)

    def __init__(self, block_rows: int = BLOCK_ROWS) -> None:
        self.block_rows = block_rows

    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        x = np.asarray(view.embeddings, dtype=np.float32)
        blocks = [slice(i, min(i + self.block_rows, len(x))) for i in range(0, len(x), self.block_rows)]
        nearest = np.full(len(x), np.inf, np.float32)
        picks: list[int] = []
        lab = view.labeled_embeddings
        if lab is not None and len(lab):
            lab = np.asarray(lab, dtype=np.float32)
            for b in blocks:
                for j in range(0, len(lab), 1024):
                    nearest[b] = np.minimum(nearest[b], _sq_dist(x[b], lab[j : j + 1024]).min(1))
        else:
            picks.append(int(rng.integers(len(x))))
        while len(picks) < n:
            if picks:
                c = x[picks[-1]][None, :]
                for b in blocks:
                    nearest[b] = np.minimum(nearest[b], _sq_dist(x[b], c)[:, 0])
                nearest[picks] = -1.0
            picks.append(int(np.argmax(nearest)))
        return np.asarray(picks[:n])
