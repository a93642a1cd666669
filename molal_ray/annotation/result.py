"""One annotator's answer for one text, as written to the annotation table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Annotation:
    """``probs``: label probabilities (label-set order, sum 1); ``votes``: shares of the
    ``n_samples`` answers per label (sum = 1 - n_invalid / n_samples); ``error`` set means the row
    carries no annotation; ``warning`` notes something done to a row that still has one."""

    probs: np.ndarray | None
    votes: np.ndarray | None
    n_invalid: int
    n_samples: int
    error: str | None = None
    warning: str | None = None

    @classmethod
    def failed(cls, error: str, n_samples: int = 0) -> Annotation:
        return cls(probs=None, votes=None, n_invalid=0, n_samples=n_samples, error=error)


def votes_from_answers(parsed: Sequence[int | None], num_classes: int) -> tuple[np.ndarray, int]:
    """Vote shares from parsed answers (label index or None) and the count of invalid ones."""
    votes = np.zeros(num_classes, dtype=np.float64)
    n_invalid = 0
    for p in parsed:
        if p is None:
            n_invalid += 1
        else:
            votes[p] += 1.0
    if len(parsed):
        votes /= len(parsed)
    return votes, n_invalid


def normalise_probs(raw: Sequence[float] | np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Label probabilities normalised over the label set; an error when no mass is usable."""
    p = np.asarray(raw, dtype=np.float64)
    if p.ndim != 1 or not np.all(np.isfinite(p)) or np.any(p < 0):
        return None, "bad_probs: not finite, negative or not a vector"
    total = p.sum()
    if total <= 0:
        return None, "bad_probs: no probability mass on any label"
    return p / total, None
