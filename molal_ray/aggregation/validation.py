"""Honest validation on the gold set: K-fold CV of a fitted aggregator, annotator quality."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix

from molal_ray.aggregation.base import Aggregator, Gold
from molal_ray.aggregation.features import AnnotationMatrix


@dataclass
class CVResult:
    accuracy: float | None
    n: int
    folds: int
    ci_low: float | None = None
    ci_high: float | None = None
    note: str = ""
    fold_accuracies: list[float] = field(default_factory=list)


def wilson(correct: int, n: int) -> tuple[float, float]:
    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def gold_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Test folds over gold positions: stratified by class (a rare class spreads over the folds
    instead of landing in one), ``min(folds, n)`` of them (leave-one-out below ``folds`` rows)."""
    import warnings

    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    k = min(folds, n)
    counts = np.bincount(y)
    if counts[counts > 0].max() >= k:
        splitter: Any = StratifiedKFold(k, shuffle=True, random_state=seed)
    else:  # no class has k rows: folds cannot be stratified
        splitter = KFold(k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has only 1 member": expected with 50 gold rows
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [test for _, test in splitter.split(np.zeros(n), y)]


def out_of_fold_proba(
    make: Callable[[], Aggregator], m: AnnotationMatrix, gold: Gold, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Label distributions of the gold rows, each from a model fitted without it (it stays in the
    pool, unlabeled); returns them (in gold order) and the folds used (positions in gold)."""
    parts = gold_folds(gold.y, folds, seed)
    n = len(gold)
    out = np.zeros((n, gold.num_classes))
    for test in parts:
        train = np.setdiff1d(np.arange(n), test)
        out[test] = make().fit(m, gold.subset(train)).predict_proba(m.take(gold.index[test]))
    return out, parts


def cross_validate(
    make: Callable[[], Aggregator], m: AnnotationMatrix, gold: Gold, folds: int = 5, seed: int = 0
) -> CVResult:
    """Each gold row is predicted by a model fitted without it (it stays in the pool, unlabeled)."""
    n = len(gold)
    if n < 2:
        return CVResult(None, n, 0, note="fewer than 2 gold labels: no cross-validation possible")
    p, parts = out_of_fold_proba(make, m, gold, folds, seed)
    k = len(parts)
    note = "" if k == folds else f"only {n} gold labels: {k} folds (leave-one-out)"
    hit = p.argmax(1) == gold.y
    accs = [float(hit[test].mean()) for test in parts]
    correct = int(hit.sum())
    lo, hi = wilson(correct, n)
    return CVResult(correct / n, n, k, lo, hi, note, accs)


def direct_accuracy(p: np.ndarray, gold: Gold) -> CVResult:
    """Accuracy on gold of a method that does not learn from gold (no CV needed)."""
    correct = int((p[gold.index].argmax(1) == gold.y).sum())
    lo, hi = wilson(correct, len(gold)) if len(gold) else (None, None)
    return CVResult(
        correct / len(gold) if len(gold) else None,
        len(gold),
        0,
        lo,
        hi,
        "does not learn from gold: accuracy on all gold rows",
    )


def annotator_quality(m: AnnotationMatrix, gold: Gold) -> dict[str, dict[str, Any]]:
    """Per annotator on the gold rows: accuracy of its majority vote and of its top probability,
    and its confusion matrix (rows: true class, columns: its vote)."""
    out: dict[str, dict[str, Any]] = {}
    C = m.num_classes
    for a, name in enumerate(m.annotators):
        rows = gold.index[m.present[gold.index, a]]
        y = gold.y[m.present[gold.index, a]]
        if len(rows) == 0:
            out[name] = {"n": 0, "vote_accuracy": None, "prob_accuracy": None, "confusion": None}
            continue
        vote = m.votes[rows, a].argmax(1)
        prob = m.probs[rows, a].argmax(1)
        conf = confusion_matrix(y, vote, labels=list(range(C)))
        out[name] = {
            "n": int(len(rows)),
            "vote_accuracy": float((vote == y).mean()),
            "prob_accuracy": float((prob == y).mean()),
            "confusion": conf.tolist(),
        }
    return out
