"""Query strategies: pick the next n samples of the unlabeled pool (pure numpy, no Ray).

A strategy sees a :class:`PoolView` (the candidates' ids and whatever the classifier computed
for them) and returns n distinct ids. Randomness comes only from the ``np.random.Generator``
passed in. Score-based strategies differ in one function (:meth:`ScoreStrategy.scores`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from molal_ray.exceptions import ConfigError, PoolExhaustedError, SchemaError

_REGISTRY: dict[str, type[QueryStrategy]] = {}


@dataclass
class PoolView:
    """What the classifier knows about the candidate samples (row i is ``ids[i]``).

    ``probs``: (N, C) predicted probabilities; ``embeddings``: (N, D) and ``labeled_embeddings``:
    (L, D) for geometric strategies; ``noisy_probs``: (K, N, C) probabilities of K copies of the
    classifier with small random weight noise (noise stability, BEMPS).
    """

    ids: np.ndarray
    probs: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    labeled_embeddings: np.ndarray | None = None
    noisy_probs: np.ndarray | None = None
    label_confidence: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def need(self, field: str) -> np.ndarray:
        """One of the classifier's outputs, which the strategy requires."""
        value = getattr(self, field)
        if value is None:
            raise SchemaError(f"the pool view lacks {field!r}; expected the classifier's outputs for the candidates")
        return np.asarray(value)

    def take(self, idx: np.ndarray) -> PoolView:
        def sub(x: np.ndarray | None, axis: int = 0) -> np.ndarray | None:
            return None if x is None else np.take(x, idx, axis=axis)

        return PoolView(
            self.ids[idx],
            sub(self.probs),
            sub(self.embeddings),
            self.labeled_embeddings,
            sub(self.noisy_probs, axis=1),
            sub(self.label_confidence),
        )


def tiebreak(ids: np.ndarray, key: int) -> np.ndarray:
    """A random order of ids that depends only on each id and ``key``, not on where or with
    which other rows it is computed: ties are then broken the same way block by block (Ray
    Data) as over the whole candidate set."""
    arr = np.asarray(ids, dtype=object)
    if arr.size == 0:
        return np.zeros(0, np.uint64)
    return pd.util.hash_array(arr, hash_key=f"{int(key) % 16**16:016x}", categorize=False)


def top_n(scores: np.ndarray, ties: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n highest scores, ties (and NaN, ranked last) broken by ``ties``."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    return np.lexsort((np.asarray(ties), -s))[:n]


def draw_rows(n_rows: int, k: int, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """k distinct row numbers of 0..n_rows-1 outside ``exclude`` (sorted unique), uniformly, in
    O(k + |exclude|) time and memory: no list of the pool's rows is made."""
    exclude = np.asarray(exclude, dtype=np.int64)
    free = n_rows - exclude.size
    if k >= free:  # everything left (small by construction: at most k rows)
        rest = np.setdiff1d(np.arange(n_rows, dtype=np.int64), exclude)
        return rest
    draw = rng.choice(n_rows, size=min(n_rows, k + exclude.size), replace=False).astype(np.int64)
    if exclude.size:
        draw = draw[~np.isin(draw, exclude)]
    return np.sort(draw[:k])


class QueryStrategy(abc.ABC):
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    model_free: ClassVar[bool] = False
    """True when the choice uses no classifier output (random): the loop then scores only the
    rows it will query, for the discrepancy weights."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if isinstance(cls.__dict__.get("name"), str):
            _REGISTRY[cls.__dict__["name"]] = cls

    def candidate_rows(self, n_rows: int, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Which pool rows (numbers 0..n_rows-1, none of ``exclude``) the loop must score before
        :meth:`select`; None: every row not excluded (unless wrapped)."""
        return None

    def select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        """n distinct ids of ``view``."""
        if n <= 0:
            raise ConfigError(f"n: got {n}; expected a positive number of samples to query")
        if n > len(view):
            raise PoolExhaustedError(len(view), n)
        for field in self.requires:
            value = getattr(view, field)
            if value is None:
                raise SchemaError(
                    f"{self.name} strategy: the pool view lacks {field!r}; expected the "
                    "classifier's outputs for the candidates"
                )
        idx = self._select(view, n, rng)
        return view.ids[idx]

    @abc.abstractmethod
    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices (into ``view``) of the n picks."""


class ScoreStrategy(QueryStrategy):
    """Picks the n highest scores, ties broken by a random order of the ids (:func:`tiebreak`,
    keyed by the first number drawn from ``rng``)."""

    per_row: ClassVar[bool] = True
    """A row's score depends on that row alone: the loop keeps each batch's top n while scoring
    (Ray Data) and merges them, with the same result as :meth:`select` over all candidates."""

    @abc.abstractmethod
    def scores(self, view: PoolView, rng: np.random.Generator) -> np.ndarray:
        """(N,) informativeness of each candidate: higher is queried first."""

    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        key = int(rng.integers(2**63))
        s = np.asarray(self.scores(view, rng), dtype=np.float64)
        return top_n(s, tiebreak(view.ids, key), n)


class SubsamplingQueryStrategy(QueryStrategy):
    """Scores only a random subset of the pool (a pool of millions costs ``size`` inferences)."""

    def __init__(self, base: QueryStrategy, size: int) -> None:
        if size <= 0:
            raise ConfigError(f"subsample size: got {size}; expected a positive number")
        self.base = base
        self.size = size
        self.requires = base.requires  # type: ignore[misc]

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"subsampled({self.base.name}, {self.size})"

    def candidate_rows(self, n_rows: int, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        return draw_rows(n_rows, self.size, exclude, rng)

    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.base._select(view, n, rng)


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_strategy(name: str, subsample: int | None = None, labelable: float = 0.0, **params: Any) -> QueryStrategy:
    """The strategy ``name``; ``labelable`` > 0 weighs its scores by the mixture's expected
    reliability (:mod:`~molal_ray.strategies.labelable`); ``subsample`` scores that many rows."""
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(f"query strategy: got {name!r}; expected one of {sorted(_REGISTRY)}")
    s = _REGISTRY[name](**params)
    if labelable:
        from molal_ray.strategies.labelable import LabelableQueryStrategy

        s = LabelableQueryStrategy(s, labelable)
    return SubsamplingQueryStrategy(s, subsample) if subsample else s


def _load_all() -> None:
    from molal_ray.strategies import bemps, coreset, entropy, noise_stability, random  # noqa: F401
