"""The answers' aggregator: Dawid-Skene and a gold-trained linear model, pooled, then
self-trained on the pool. The default (``text_view.py``) is this one checked against the texts
where they have embeddings, and this one exactly where they have none.

1. Dawid-Skene over the votes: each annotator's confusions, learnt from the whole pool with the
   gold labels fixed and weighted (``gold_weight``).
2. A multinomial logistic regression on the gold rows alone over [log probs, votes, presence]:
   what the annotators' joint answers mean, correlated errors included; its regularisation is
   chosen by cross-validation on the gold rows (``C_GRID``).
3. The two posteriors pooled geometrically; the gold model's exponent is n / (n +
   ``gold_half_weight_rows``) for n gold rows.
4. Self-training: a logistic regression on the gold rows plus the pool rows whose pooled
   confidence reaches ``threshold``, each predicted class keeping at least its ``class_floor``
   most confident share, classes weighted toward balance (n / (K n_k), at most
   ``max_class_weight``); the pool is relabelled by it and the fit repeated until fewer than
   ``tol`` of its labels change, at most ``max_passes`` times.
5. One temperature, fitted on out-of-fold predictions of the gold rows (``calibration.py``):
   the labels do not change; ``confidence`` and the loop's negatives become meaningful.

What it chooses at run time it chooses on the gold rows only. Why each step and setting (and
what they were measured against): docs/aggregation.md, "How `pooled` was chosen". Fitting uses
all gold rows and at most ``max_fit_rows`` pool rows (sampled with ``seed``); prediction covers
every row, so a pool of millions costs one vectorised pass.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from typing import Annotated

import numpy as np
from pydantic import Field, StrictBool
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from molal_ray.aggregation.base import Aggregator, Gold, normalise_rows, validated
from molal_ray.aggregation.calibration import apply_temperature, fit_temperature
from molal_ray.aggregation.dawid_skene import DawidSkene
from molal_ray.aggregation.features import AnnotationMatrix
from molal_ray.aggregation.learners import linear_features, padded_proba
from molal_ray.aggregation.validation import out_of_fold_proba

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
CALIBRATION_FIT_ROWS = 50_000  # pool rows each out-of-fold copy fits on (temperature only)


def _fit_lr(X: np.ndarray, y: np.ndarray, C: float, max_iter: int = 2000, sample_weight: np.ndarray | None = None):
    classes = np.unique(y)
    if len(classes) < 2:
        return None, classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        model.fit(X, np.searchsorted(classes, y), logisticregression__sample_weight=sample_weight)
    return model, classes


def balanced_weights(y: np.ndarray, max_weight: float) -> np.ndarray:
    """Per-row weights that move the classes present in ``y`` toward balance: scikit-learn's
    balanced weights, n / (K n_k) for a row of class k (K the classes present), at most
    ``max_weight``. ``max_weight=inf`` is the plain balanced weighting."""
    return np.minimum(compute_sample_weight("balanced", y), max_weight)


# The regularisation chosen for each gold set seen in this process, by a digest of its features,
# labels and seed: a loop refits its aggregator every round on the gold rows it already chose for
# (and each round's out-of-fold copies on the same folds), and the choice, 25 fits, was most of a
# round's aggregation time on TREC.
_CHOSEN_C: OrderedDict[bytes, float] = OrderedDict()
_CHOSEN_C_KEPT = 256
_CHOSEN_C_LOCK = threading.Lock()


def choose_c(X: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Regularisation of the gold-only model by K-fold accuracy on the gold rows (remembered for
    the same rows, labels and seed)."""
    h = hashlib.blake2b(digest_size=16)
    for a in (np.ascontiguousarray(X), np.ascontiguousarray(y)):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    h.update(str(seed).encode())
    key = h.digest()
    with _CHOSEN_C_LOCK:
        if key in _CHOSEN_C:
            _CHOSEN_C.move_to_end(key)
            return _CHOSEN_C[key]
    c = _choose_c(X, y, seed)
    with _CHOSEN_C_LOCK:
        _CHOSEN_C[key] = c
        while len(_CHOSEN_C) > _CHOSEN_C_KEPT:
            _CHOSEN_C.popitem(last=False)
    return c


def forget_chosen_c() -> None:
    """Forget the regularisations chosen so far (a benchmark timing a fresh process's fit)."""
    with _CHOSEN_C_LOCK:
        _CHOSEN_C.clear()


def _choose_c(X: np.ndarray, y: np.ndarray, seed: int) -> float:
    n = len(y)
    if n < 4 or len(np.unique(y)) < 2:
        return 0.1
    cv = KFold(n_splits=min(5, n // 2), shuffle=True, random_state=seed)
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in C_GRID:
            try:
                model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
                scores[c] = float(np.mean(cross_val_score(model, X, y, cv=cv, error_score=0.0)))
            except ValueError:
                scores[c] = 0.0
    best = max(scores.values())
    return min(c for c, s in scores.items() if s >= best - 1e-12)  # ties: the stronger regularisation


def gold_exponent(n_gold: int, half_weight_rows: float) -> float:
    """Weight of the gold-only model in the pool: n / (n + half_weight_rows), 1 when that is 0."""
    return 1.0 if half_weight_rows == 0 else n_gold / (n_gold + half_weight_rows)


def self_training_rows(Q: np.ndarray, threshold: float, class_floor: float) -> np.ndarray:
    """Indices of the rows of Q (S, C) that self-training fits on: those whose top probability
    is at least ``threshold``, and for each predicted class its ``class_floor`` most confident
    share of rows (rounded up), so that no class the pool predicts is left out."""
    conf, label = Q.max(1), Q.argmax(1)
    keep = conf >= threshold
    if class_floor > 0 and len(Q):
        order = np.lexsort((-conf, label))  # by class, most confident first
        counts = np.bincount(label, minlength=Q.shape[1])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty(len(Q), dtype=np.int64)
        rank[order] = np.arange(len(Q)) - np.repeat(starts, counts)
        cut = np.ceil(class_floor * counts).astype(np.int64)  # rows each class keeps at least
        keep |= rank < cut[label]
    return np.flatnonzero(keep)


class PooledAggregator(Aggregator):
    name = "pooled"
    label_only = {"calibrate": False}

    @validated
    def __init__(
        self,
        threshold: Annotated[
            float,
            Field(
                ge=0,
                description="pooled confidence a pool row needs to "
                "be a pseudo-label (above 1 with class_floor 0: no "
                "self-training)",
            ),
        ] = 0.98,
        gold_weight: Annotated[float, Field(ge=0)] = 20.0,
        final_c: Annotated[float, Field(gt=0)] = 1.0,
        max_fit_rows: Annotated[int, Field(ge=1)] = 200_000,
        seed: int = 0,
        calibrate: StrictBool = True,
        calibration_folds: Annotated[int, Field(ge=2)] = 5,
        gold_half_weight_rows: Annotated[float, Field(ge=0)] = 50.0,
        max_passes: Annotated[int, Field(ge=1)] = 8,
        tol: Annotated[float, Field(ge=0, description="a share of the pool's labels")] = 1e-3,
        class_floor: Annotated[float, Field(ge=0, le=1, description="a share of each class's rows")] = 0.5,
        balance_classes: StrictBool = True,
        max_class_weight: Annotated[
            float, Field(ge=1, description="the most a class's rows may weigh (inf: plain balanced weights)")
        ] = 2.0,
    ) -> None:
        self.threshold = threshold
        self.balance_classes = balance_classes
        self.max_class_weight = max_class_weight
        self.class_floor = class_floor
        self.max_passes = max_passes
        self.tol = tol
        self.gold_half_weight_rows = gold_half_weight_rows
        self.gold_weight = gold_weight
        self.final_c = final_c
        self.max_fit_rows = max_fit_rows
        self.seed = seed
        self.calibrate = calibrate
        self.calibration_folds = calibration_folds

    def _fit(self, m: AnnotationMatrix, gold: Gold) -> None:
        self._fit_uncalibrated(m, gold)
        self.temperature_ = 1.0
        if self.calibrate and len(gold) >= 2 * self.calibration_folds and len(np.unique(gold.y)) >= 2:

            def uncalibrated() -> PooledAggregator:
                # The out-of-fold copies only predict the 50-odd gold rows: a smaller pool sample
                # keeps their cost well under the main fit's on pools of millions.
                return self.unfitted_copy(
                    **self.label_only,  # type: ignore[return-value]
                    max_fit_rows=min(self.max_fit_rows, CALIBRATION_FIT_ROWS),
                )

            oof, _ = out_of_fold_proba(uncalibrated, m, gold, self.calibration_folds, self.seed)
            self.temperature_ = fit_temperature(oof, gold.y)

    def _fit_uncalibrated(self, m: AnnotationMatrix, gold: Gold) -> None:
        """Steps 1-4: the pooled posterior and the self-trained model (no temperature)."""
        rng = np.random.default_rng(self.seed)
        self.annotators_ = list(m.annotators)
        others = np.setdiff1d(np.arange(len(m)), gold.index)
        if len(others) > self.max_fit_rows:
            others = np.sort(rng.choice(others, self.max_fit_rows, replace=False))
        rows = np.concatenate([gold.index, others])
        sub = m.take(rows)
        sub_gold = Gold(np.arange(len(gold)), gold.y, gold.num_classes)
        self.ds_ = DawidSkene(gold_weight=self.gold_weight).fit(sub, sub_gold)
        T = self.ds_.predict_proba(sub)
        X = linear_features(sub)
        self.gold_c_ = choose_c(X[: len(gold)], gold.y, self.seed)
        gold_model, gold_classes = _fit_lr(X[: len(gold)], gold.y, self.gold_c_)
        if gold_model is not None:
            P = padded_proba(gold_model, X, gold_classes, self.num_classes_)
            self.gold_exponent_ = gold_exponent(len(gold), self.gold_half_weight_rows)
            Q = normalise_rows(np.exp(np.log(T + 1e-6) + self.gold_exponent_ * np.log(P + 1e-6)))
        else:  # a single class in gold: nothing to learn a boundary from; keep Dawid-Skene
            self.gold_exponent_ = 0.0
            Q = T
        # Self-training: fit on gold + confident pool rows, relabel the pool with that model, repeat
        # until the pool's labels settle (fewer than ``tol`` of them change) or ``max_passes``.
        self.n_pseudo_ = 0
        self.label_changes_: list[float] = []  # share of the pool's labels each pass changed
        self.model_, self.classes_ = None, np.unique(gold.y)
        labels = Q[len(gold) :].argmax(1)
        for _ in range(self.max_passes):
            sel = self_training_rows(Q[len(gold) :], self.threshold, self.class_floor) + len(gold)
            y = np.concatenate([gold.y, Q[sel].argmax(1)])
            weight = balanced_weights(y, self.max_class_weight) if self.balance_classes else None
            model, classes = _fit_lr(
                X[np.concatenate([np.arange(len(gold)), sel])], y, self.final_c, sample_weight=weight
            )
            if model is None:  # a single class among gold and pseudo-labels: keep what there is
                break
            self.model_, self.classes_, self.n_pseudo_ = model, classes, int(len(sel))
            Q = padded_proba(model, X, classes, self.num_classes_)
            new_labels = Q[len(gold) :].argmax(1)
            changed = float((new_labels != labels).mean()) if len(labels) else 0.0
            self.label_changes_.append(changed)
            labels = new_labels
            if changed < self.tol:
                break
        self.passes_ = len(self.label_changes_)

    def _uncalibrated_proba(self, m: AnnotationMatrix) -> np.ndarray:
        m = m.aligned(self.annotators_)
        if self.model_ is None:
            return self.ds_.predict_proba(m)
        return normalise_rows(padded_proba(self.model_, linear_features(m), self.classes_, self.num_classes_))

    def predict_proba(self, m: AnnotationMatrix) -> np.ndarray:
        p = self._uncalibrated_proba(m)
        return apply_temperature(p, self.temperature_) if self.temperature_ != 1.0 else p
