"""Query what the classifier needs *and* the mixture can label (a wrapper of a score strategy).

Uncertainty sampling picks the texts the classifier finds hardest, and those are often the texts
the LLMs find hardest too: on TREC the mixture's labels were 62.5% right on max-entropy's
queries against 77.8% on random ones, so the classifier learns from the worst labels. This
wrapper multiplies the base strategy's informativeness (as a rank in [0, 1], so that any score's
scale works) by the mixture's expected reliability on each candidate raised to ``weight``:

    score = rank(base score) * label_confidence ** weight

``label_confidence`` is computed by the loop before any LLM sees the candidates (they are not
annotated yet): for each candidate, the annotators' agreement (the share voting for the
plurality label) on its nearest annotated texts, by cosine similarity of the pool's frozen
embeddings (:func:`expected_agreement`). Texts that neither the classifier nor the LLMs know are
left to people (``loop.human_per_round`` routes them), not fed to the classifier as noise.
"""

from __future__ import annotations

import numpy as np

from molal_ray.exceptions import ConfigError, SchemaError
from molal_ray.strategies.base import PoolView, QueryStrategy, ScoreStrategy, tiebreak, top_n


class LabelableQueryStrategy(QueryStrategy):
    """``base`` weighed by the mixture's expected reliability (``PoolView.label_confidence``)."""

    def __init__(self, base: QueryStrategy, weight: float) -> None:
        if not isinstance(base, ScoreStrategy):
            raise ConfigError(
                f"loop.labelable_weight: the {base.name!r} strategy has no per-sample score to weigh; "
                "expected a score strategy (max-entropy, noise-stability, bemps)"
            )
        if weight <= 0:
            raise ConfigError(f"loop.labelable_weight: got {weight}; expected a positive weight")
        self.base = base
        self.weight = float(weight)
        self.requires = base.requires  # type: ignore[misc]  # the classifier's outputs it needs

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"labelable({self.base.name}, {self.weight:g})"

    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        if view.label_confidence is None:
            raise SchemaError(
                f"{self.name}: the pool view lacks 'label_confidence'; expected the mixture's expected "
                "reliability on each candidate (classifier.mode: head gives the loop the embeddings)"
            )
        key = int(rng.integers(2**63))
        s = np.nan_to_num(np.asarray(self.base.scores(view, rng), np.float64), nan=-np.inf)
        rank = (np.argsort(np.argsort(s, kind="stable"), kind="stable") + 1) / max(len(s), 1)
        conf = np.clip(np.nan_to_num(np.asarray(view.label_confidence, np.float64), nan=0.0), 0.0, 1.0)
        return top_n(rank * conf**self.weight, tiebreak(view.ids, key), n)


def agreement_shares(votes: np.ndarray) -> np.ndarray:
    """(S,) the share of a sample's present annotators whose top vote is the plurality label
    (``votes``: (S, A, C), NaN where absent); NaN for a sample nobody answered."""
    v = np.asarray(votes, np.float64)
    present = np.isfinite(v).all(2) & (np.nan_to_num(v).sum(2) > 0)
    top = np.nan_to_num(v).argmax(2)
    C = v.shape[2]
    counts = np.stack([((top == c) & present).sum(1) for c in range(C)], 1)
    n = present.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, counts.max(1) / np.maximum(n, 1), np.nan)


def expected_agreement(
    candidates: np.ndarray, annotated: np.ndarray, agreement: np.ndarray, k: int = 10, chunk: int = 8192
) -> np.ndarray:
    """(N,) the annotators' expected agreement on each candidate: the similarity-weighted mean of
    ``agreement`` over its ``k`` nearest ``annotated`` texts (cosine of the embeddings); rows of
    ``annotated`` whose agreement is NaN are left out. With no annotated text, 1 (no weighing)."""
    keep = np.isfinite(agreement)
    A, y = np.asarray(annotated, np.float64)[keep], np.asarray(agreement, np.float64)[keep]
    X = np.asarray(candidates, np.float64)
    if len(A) == 0 or len(X) == 0:
        return np.ones(len(X))

    def unit(M: np.ndarray) -> np.ndarray:
        return M / np.maximum(np.linalg.norm(M, axis=1, keepdims=True), 1e-12)

    A, k = unit(A), min(k, len(A))
    out = np.empty(len(X))
    for lo in range(0, len(X), chunk):  # (chunk, M) similarities at a time
        sims = unit(X[lo : lo + chunk]) @ A.T
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = np.clip(np.take_along_axis(sims, nearest, 1), 1e-6, None)
        out[lo : lo + chunk] = (w * y[nearest]).sum(1) / w.sum(1)
    return out
