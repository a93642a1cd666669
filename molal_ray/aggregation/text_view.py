"""The text-aware aggregator: the answers' labels, checked against what the texts themselves say,
as far as the labelled rows show that the texts help.

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
3. The two are pooled geometrically, ``Q * P ** e`` renormalised, with the text view's weight
   ``e`` *earned* on the labelled rows: each of ``text_exponents`` (0: the answers alone) is
   scored by the log-loss of the gold labels under out-of-fold predictions (every gold row
   predicted by copies fitted without it, answers view and text view alike, on
   ``calibration_folds`` folds), each with its own temperature; the weakest weight whose
   log-loss is within ``text_choice_se`` standard errors of the best is used (the
   one-standard-error rule, softened: ``weakest_within``). Where the encoder separates the
   classes (TREC with MiniLM) a strong weight wins; where the texts carry no label signal
   (shuffled texts) or little (a weak encoder) the text view's held-out predictions add nothing
   beyond noise, and the answers alone win. ``text_choice_`` keeps the evidence (each weight's
   held-out log-loss and accuracy) for the report and the loop's log. A row without an embedding
   keeps ``Q``.
4. The chosen weight's temperature (fitted on the same out-of-fold predictions) calibrates the
   result, as the default does.

Without embeddings (or with too few rows to train the text view on) it is the answers'
aggregator exactly. What it chooses at run time it chooses on the gold rows only (the answers
view's regularisation, the text view's weight, the temperature); its fixed settings were chosen
on TREC development seeds (``benchmarks/aggregation_ablation.py --text``), with the loop's few
hundred annotated rows and with the whole pool.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from molal_ray.aggregation.base import Gold, normalise_rows, validated
from molal_ray.aggregation.calibration import EPS, apply_temperature, fit_temperature
from molal_ray.aggregation.features import AnnotationMatrix
from molal_ray.aggregation.pooled import CALIBRATION_FIT_ROWS, PooledAggregator
from molal_ray.aggregation.validation import gold_folds
from molal_ray.exceptions import AggregationError

PREDICT_CHUNK = 65_536  # rows of embeddings multiplied at a time (memory stays flat on large pools)


def pool_views(Q: np.ndarray, P: np.ndarray, exponent: float) -> np.ndarray:
    """``Q * P ** exponent`` renormalised, row by row; a row whose ``P`` is not finite (no
    embedding, or no text view) keeps ``Q``."""
    out = np.array(Q, dtype=np.float64, copy=True)
    if exponent == 0:
        return out
    ok = np.isfinite(P).all(1)
    out[ok] = normalise_rows(np.exp(np.log(Q[ok] + 1e-6) + exponent * np.log(P[ok] + 1e-6)))
    return out


def row_nll(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's negative log-likelihood of its label ``y`` under ``p``."""
    return -np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))


def weakest_within(losses: np.ndarray, z: float) -> int:
    """Of candidates ordered weakest first, each with per-row held-out ``losses`` (K, n) on the
    same rows, the first whose mean loss is within ``z`` standard errors of the best one's: the
    one-standard-error rule of cross-validation (Hastie, Tibshirani and Friedman, *The Elements of
    Statistical Learning*, 7.10) at ``z = 1``, with the standard error of the paired difference.
    A choice among a few weights on 50-odd rows is noisy; the rule keeps the weaker weight unless
    the evidence for a stronger one is beyond that noise."""
    mean = losses.mean(1)
    best = int(np.argmin(mean))
    n = losses.shape[1]
    for k in range(best):
        d = losses[k] - losses[best]
        se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        if d.mean() <= z * se:
            return k
    return best


class TextAwareAggregator(PooledAggregator):
    name = "pooled-text"
    without_text = "pooled"

    @validated
    def __init__(
        self,
        text_threshold: Annotated[
            float, Field(ge=0, le=1, description="answers-view confidence a row needs to train the text view")
        ] = 0.98,
        text_gold_weight: Annotated[float, Field(gt=0, description="rows each gold row weighs in the text view")] = 5.0,
        text_c: Annotated[float, Field(gt=0, description="the text view's inverse regularisation, per row")] = 3000.0,
        text_exponents: Annotated[
            tuple[Annotated[float, Field(ge=0)], ...],
            Field(
                min_length=1,
                description="the text view's weights tried (0: the answers alone); the one whose "
                "out-of-fold predictions of the gold rows fit them best is used; one value: always that",
            ),
        ] = (0.0, 1.0, 2.0, 4.0, 8.0),
        text_choice_se: Annotated[
            float,
            Field(
                ge=0,
                description="a weaker text weight is kept while its held-out log-loss is within this "
                "many standard errors of the best weight's (1: the one-standard-error rule; 0: the best)",
            ),
        ] = 0.5,
        text_folds: Annotated[int, Field(ge=2, description="folds of the text view's cross-fitting")] = 3,
        max_text_fit_rows: Annotated[int, Field(ge=2)] = 20_000,
        min_text_rows: Annotated[int, Field(ge=2)] = 20,
        **pooled: Any,
    ) -> None:
        super().__init__(**pooled)
        self.text_threshold = text_threshold
        self.text_gold_weight = text_gold_weight
        self.text_c = text_c
        self.text_exponents = tuple(sorted({float(x) for x in text_exponents}))  # weakest first
        self.text_choice_se = text_choice_se
        self.text_folds = text_folds
        self.max_text_fit_rows = max_text_fit_rows
        self.min_text_rows = min_text_rows

    # -- fitting ------------------------------------------------------------------------------------
    def _fit(self, m: AnnotationMatrix, gold: Gold) -> None:
        self._fit_uncalibrated(m, gold)
        self.temperature_ = 1.0
        grid = self.text_exponents if self.text_used_ else (0.0,)
        self.text_exponent_ = grid[-1] if len(grid) == 1 else 0.0
        self.text_choice_: dict[str, Any] = {"exponents": list(grid), "chosen": self.text_exponent_, "gold_rows": 0}
        choose = len(grid) > 1
        held_out_possible = len(gold) >= 2 * self.calibration_folds and len(np.unique(gold.y)) >= 2
        if not held_out_possible:
            if choose:
                self.text_choice_["note"] = (
                    f"{len(gold)} gold rows: too few to weigh the text view out of fold "
                    f"(at least {2 * self.calibration_folds} of 2 classes); the answers alone"
                )
            return
        if not (choose or self.calibrate):
            return
        Q, P = self._held_out_views(m, gold)
        self.held_out_views_ = (Q, P)  # kept for inspection (benchmarks compare choice rules on it)
        losses, acc, temps = [], [], []
        for e in grid:
            R = pool_views(Q, P, e)
            t = fit_temperature(R, gold.y)
            losses.append(row_nll(apply_temperature(R, t), gold.y))
            acc.append(float((R.argmax(1) == gold.y).mean()))
            temps.append(t)
        pick = weakest_within(np.array(losses), self.text_choice_se)
        self.text_exponent_ = grid[pick]
        self.temperature_ = temps[pick] if self.calibrate else 1.0
        self.text_choice_ = {
            "exponents": list(grid),
            "chosen": self.text_exponent_,
            "gold_rows": int(len(gold)),
            "held_out_nll": [round(float(x.mean()), 4) for x in losses],
            "held_out_accuracy": [round(x, 4) for x in acc],
            "rule": f"the weakest weight within {self.text_choice_se:g} standard errors of the best held-out log-loss",
        }

    def _held_out_views(self, m: AnnotationMatrix, gold: Gold) -> tuple[np.ndarray, np.ndarray]:
        """The gold rows' answers-view and text-view distributions, each row from copies fitted
        without its gold label (it stays in the pool, unlabelled): (n, C) each, in gold order;
        a text-view row is NaN where the copy has no text view for it."""
        n, C = len(gold), self.num_classes_
        Q, P = np.zeros((n, C)), np.full((n, C), np.nan)
        for test in gold_folds(gold.y, self.calibration_folds, self.seed):
            train = np.setdiff1d(np.arange(n), test)
            # One weight, no temperature: a copy that neither chooses nor calibrates (no nesting);
            # it only predicts a few gold rows, so a smaller pool sample keeps it cheap on millions.
            copy = self.unfitted_copy(
                calibrate=False,
                text_exponents=(self.text_exponents[-1],),
                max_fit_rows=min(self.max_fit_rows, CALIBRATION_FIT_ROWS),
            )
            assert isinstance(copy, TextAwareAggregator)
            copy.fit(m, gold.subset(train))
            rows = m.take(gold.index[test])
            Q[test] = copy.answers_proba(rows)
            P[test] = copy.text_proba(rows)
        return Q, P

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

    # -- predicting ---------------------------------------------------------------------------------
    @property
    def text_weight(self) -> float:
        """The text view's weight in use: the chosen exponent (0 when the texts are not used)."""
        return float(self.text_exponent_) if getattr(self, "text_used_", False) else 0.0

    def answers_proba(self, m: AnnotationMatrix) -> np.ndarray:
        """The answers view's (S, C) distributions (uncalibrated)."""
        return super()._uncalibrated_proba(m)

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
        Q = self.answers_proba(m)
        if self.text_weight == 0 or m.embeddings is None:
            return Q
        return pool_views(Q, self.text_proba(m), self.text_weight)

    def text_summary(self) -> dict[str, Any]:
        """What the text view did in the last fit, for a report or a log: whether it was used,
        the rows it trained on, the weight chosen and the evidence (held-out log-likelihood and
        accuracy of each weight on the gold rows)."""
        info: dict[str, Any] = {
            "used": bool(getattr(self, "text_used_", False)) and self.text_weight > 0,
            "trained": bool(getattr(self, "text_used_", False)),
            "rows": int(getattr(self, "text_rows_", 0)),
            "weight": self.text_weight,
            "note": getattr(self, "text_note_", ""),
        }
        choice = getattr(self, "text_choice_", None)
        if info["trained"] and choice is not None:
            info["choice"] = choice
            if not info["note"]:
                info["note"] = describe_choice(choice)
        return info


def describe_choice(choice: dict[str, Any]) -> str:
    """One line: the weight chosen and on what evidence."""
    if "held_out_nll" not in choice:
        return choice.get("note", f"text weight {choice['chosen']:g} (fixed)")
    pairs = ", ".join(
        f"{e:g}: {nll:.3f}/{acc:.3f}"
        for e, nll, acc in zip(choice["exponents"], choice["held_out_nll"], choice["held_out_accuracy"])
    )
    if len(choice["exponents"]) == 1:
        return (
            f"text weight {choice['chosen']:g} (fixed; on {choice['gold_rows']} gold rows out of fold, "
            f"log-loss/accuracy {pairs})"
        )
    return (
        f"text weight {choice['chosen']:g} chosen on {choice['gold_rows']} gold rows out of fold "
        f"(weight: log-loss/accuracy {pairs})"
    )
