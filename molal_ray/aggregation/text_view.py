"""The text-aware aggregator: the default's labels, checked against what the texts themselves say.

Every aggregator of the LLMs' answers alone is bounded by their shared mistakes (on TREC a
logistic regression on the five LLMs' features trained on *every* gold label reaches 0.837).
The text is evidence they do not use: similar texts tend to share a label, and the LLMs' shared
mistakes are a minority among the texts that look like them. This aggregator is co-training of
two views of each sample:

1. The *answers* view: the default aggregator (``pooled.py``, steps 1-4, uncalibrated) over the
   LLMs' answers and the gold labels gives ``Q``.
2. The *text* view: a multinomial logistic regression on the samples' frozen embeddings (the
   project's encoder; ``AnnotationMatrix.embeddings``), trained on the gold rows (each weighing
   ``text_gold_weight`` rows) and on the rows whose ``Q`` is at least ``text_threshold`` sure,
   with ``Q``'s label. It is *cross-fitted*: the rows it trains on are split into
   ``text_folds`` folds, and each of them is predicted by the model fitted on the other folds,
   so its prediction ``P`` never repeats a row's own pseudo-label (or gold label); every other
   row is predicted by the mean of the fold models. Its regularisation is per row
   (``C = text_c / total weight``), so the same setting holds for a loop's few hundred rows and
   a pool of millions.
3. The two are pooled geometrically, ``Q * P ** text_exponent`` renormalised: the text view's
   distributions are flat (a strongly regularised model), the exponent sharpens them, and where
   the views agree the label is Q's. A row without an embedding keeps ``Q``.
4. One temperature is fitted on out-of-fold predictions of the gold rows, as the default does.

Without embeddings (or with too few rows to train the text view on) it is the default aggregator
exactly. What it chooses at run time it chooses on the gold rows only (the answers view's
regularisation, the temperature); its fixed settings were chosen on TREC development seeds
(``benchmarks/aggregation_ablation.py --text``), with the loop's few hundred annotated rows and
with the whole pool.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from molal_ray.aggregation.base import Gold, normalise_rows
from molal_ray.aggregation.features import AnnotationMatrix
from molal_ray.aggregation.pooled import PooledAggregator
from molal_ray.exceptions import AggregationError, ConfigError

PREDICT_CHUNK = 65_536  # rows of embeddings multiplied at a time (memory stays flat on large pools)


class TextAwareAggregator(PooledAggregator):
    name = "pooled-text"
    without_text = "pooled"

    def __init__(
        self,
        text_threshold: float = 0.98,
        text_gold_weight: float = 5.0,
        text_c: float = 3000.0,
        text_exponent: float = 4.0,
        text_folds: int = 3,
        max_text_fit_rows: int = 20_000,
        min_text_rows: int = 20,
        **pooled: Any,
    ) -> None:
        super().__init__(**pooled)
        if not 0 <= text_threshold <= 1:
            raise ConfigError(f"pooled-text: text_threshold must be in [0, 1]; got {text_threshold}")
        if not text_gold_weight > 0:
            raise ConfigError(f"pooled-text: text_gold_weight must be > 0; got {text_gold_weight}")
        if not text_c > 0:
            raise ConfigError(f"pooled-text: text_c must be > 0; got {text_c}")
        if not text_exponent >= 0:
            raise ConfigError(f"pooled-text: text_exponent must be >= 0 (0 ignores the text); got {text_exponent}")
        if text_folds < 2:
            raise ConfigError(f"pooled-text: text_folds must be >= 2; got {text_folds}")
        if max_text_fit_rows < 2 or min_text_rows < 2:
            raise ConfigError("pooled-text: max_text_fit_rows and min_text_rows must be >= 2")
        self.text_threshold = text_threshold
        self.text_gold_weight = text_gold_weight
        self.text_c = text_c
        self.text_exponent = text_exponent
        self.text_folds = text_folds
        self.max_text_fit_rows = max_text_fit_rows
        self.min_text_rows = min_text_rows

    def _fit_uncalibrated(self, m: AnnotationMatrix, gold: Gold) -> None:
        super()._fit_uncalibrated(m, gold)
        self.text_used_ = False
        self.text_rows_ = 0
        self.text_note_ = ""
        self.text_models_: list[Any] = []
        self.text_dim_ = None if m.embeddings is None else int(m.embeddings.shape[1])
        if m.embeddings is None:
            self.text_note_ = "no embeddings: the answers alone"
            return
        has = m.has_embedding
        Q = super()._uncalibrated_proba(m)
        labels = Q.argmax(1)
        weight = np.where((Q.max(1) >= self.text_threshold) & has, 1.0, 0.0)
        gold_has = has[gold.index]
        labels[gold.index[gold_has]] = gold.y[gold_has]
        weight[gold.index] = np.where(gold_has, self.text_gold_weight, 0.0)
        rows = np.flatnonzero(weight > 0)
        pseudo = np.setdiff1d(rows, gold.index)
        if len(pseudo) > self.max_text_fit_rows:
            keep = np.random.default_rng([self.seed, 1]).choice(pseudo, self.max_text_fit_rows, replace=False)
            rows = np.union1d(gold.index[gold_has], keep)
        if len(rows) < max(self.min_text_rows, self.text_folds) or len(np.unique(labels[rows])) < 2:
            self.text_note_ = (
                f"{len(rows)} rows to train the text view on (fewer than {self.min_text_rows} or "
                "a single class): the answers alone"
            )
            return
        E = m.embeddings
        held_out = np.zeros((len(rows), self.num_classes_))
        folds = KFold(self.text_folds, shuffle=True, random_state=self.seed).split(rows)
        for train, test in folds:
            model = self._fit_text_model(E[rows[train]], labels[rows[train]], weight[rows[train]])
            held_out[test] = self._text_proba([model], E[rows[test]])
            self.text_models_.append(model)
        # Each training row's own prediction comes from the fold model that did not see it.
        self.text_held_out_ = pd.Series(np.arange(len(rows)), index=pd.Index(m.sample_ids[rows]))
        self.text_held_out_proba_ = held_out
        self.text_used_ = True
        self.text_rows_ = int(len(rows))

    def _fit_text_model(self, X: np.ndarray, y: np.ndarray, w: np.ndarray) -> Any:
        if len(np.unique(y)) < 2:  # a fold of a small, lopsided set may hold one class: predict it
            return DummyClassifier(strategy="prior").fit(X, y, sample_weight=w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=self.text_c / float(w.sum()), max_iter=1000).fit(X, y, sample_weight=w)

    def _text_proba(self, models: list[Any], X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), self.num_classes_))
        for model in models:  # a fold may lack a class: its columns stay 0 for that model
            out[:, model.classes_] += model.predict_proba(X)
        return out / len(models)

    def text_proba(self, m: AnnotationMatrix) -> np.ndarray:
        """The text view's (S, C) distributions of ``m``'s rows (NaN rows where a row has no
        embedding or the text view is not in use)."""
        out = np.full((len(m), self.num_classes_), np.nan)
        if not getattr(self, "text_used_", False) or m.embeddings is None:
            return out
        if m.embeddings.shape[1] != self.text_dim_:
            raise AggregationError(
                f"pooled-text: embeddings of width {m.embeddings.shape[1]}; the aggregator was "
                f"fitted on width {self.text_dim_} (another encoder?)"
            )
        has = np.flatnonzero(m.has_embedding)
        for start in range(0, len(has), PREDICT_CHUNK):
            part = has[start : start + PREDICT_CHUNK]
            out[part] = self._text_proba(self.text_models_, np.asarray(m.embeddings[part], np.float64))
        pos = self.text_held_out_.reindex(m.sample_ids).to_numpy()
        seen = np.flatnonzero(np.isfinite(pos) & m.has_embedding)
        out[seen] = self.text_held_out_proba_[pos[seen].astype(np.int64)]
        return out

    def _uncalibrated_proba(self, m: AnnotationMatrix) -> np.ndarray:
        Q = super()._uncalibrated_proba(m)
        if not getattr(self, "text_used_", False) or m.embeddings is None or self.text_exponent == 0:
            return Q
        P = self.text_proba(m)
        ok = np.isfinite(P).all(1)
        out = Q.copy()
        out[ok] = normalise_rows(np.exp(np.log(Q[ok] + 1e-6) + self.text_exponent * np.log(P[ok] + 1e-6)))
        return out
