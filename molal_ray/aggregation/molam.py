"""MoLAM as in the paper: a gradient-boosted meta-learner over [probs, votes] of every annotator,
trained on the gold set, then grown with pseudo-labels whose confidence passes a threshold.

Features are the paper's [z_1, c_1, ..., z_N, c_N]; absent annotators are NaN, which XGBoost
routes as missing values. The paper's notebook selects the model on its own evaluation rows;
here nothing but the gold set is used for fitting or choosing.
"""

from __future__ import annotations

import numpy as np

from molal_ray.aggregation.base import Aggregator, Gold, normalise_rows
from molal_ray.aggregation.features import AnnotationMatrix
from molal_ray.aggregation.learners import padded_proba


class MoLAMXGB(Aggregator):
    name = "molam-xgb"

    def __init__(
        self,
        threshold: float = 0.9,
        iterations: int = 3,
        n_estimators: int = 100,
        max_depth: int = 3,
        learning_rate: float = 0.1,
        max_fit_rows: int = 200_000,
        seed: int = 0,
        n_jobs: int = 2,
    ) -> None:
        self.threshold = threshold
        self.iterations = iterations
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.max_fit_rows = max_fit_rows
        self.seed = seed
        self.n_jobs = n_jobs

    def _model(self):
        import xgboost as xgb

        return xgb.XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            n_jobs=self.n_jobs,
            tree_method="hist",
            random_state=self.seed,
        )

    def _train(self, X: np.ndarray, y: np.ndarray) -> None:
        classes = np.unique(y)
        self.classes_ = classes
        if len(classes) < 2:
            self.model_ = None
            return
        remap = np.searchsorted(classes, y)
        self.model_ = self._model().fit(X, remap)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        if self.model_ is None:
            out = np.zeros((len(X), self.num_classes_))
            out[:, self.classes_[0]] = 1.0
            return out
        return padded_proba(self.model_, X, self.classes_, self.num_classes_)

    def _fit(self, m: AnnotationMatrix, gold: Gold) -> None:
        self.annotators_ = list(m.annotators)
        rng = np.random.default_rng(self.seed)
        X = m.features()
        others = np.setdiff1d(np.arange(len(m)), gold.index)
        if len(others) > self.max_fit_rows:
            others = rng.choice(others, self.max_fit_rows, replace=False)
        self._train(X[gold.index], gold.y)
        self.n_pseudo_ = []
        for _ in range(self.iterations):
            p = self._proba(X[others])
            conf = p.max(1)
            sel = conf >= self.threshold
            self.n_pseudo_.append(int(sel.sum()))
            idx = np.concatenate([gold.index, others[sel]])
            y = np.concatenate([gold.y, p.argmax(1)[sel]])
            self._train(X[idx], y)

    def predict_proba(self, m: AnnotationMatrix) -> np.ndarray:
        return normalise_rows(self._proba(m.aligned(self.annotators_).features()))
