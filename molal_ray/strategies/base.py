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

from molal_ray.exceptions import ConfigError, PoolExhaustedError

_REGISTRY: dict[str, type["QueryStrategy"]] = {}


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

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> "PoolView":
        def sub(x: np.ndarray | None, axis: int = 0) -> np.ndarray | None:
            return None if x is None else np.take(x, idx, axis=axis)

        return PoolView(self.ids[idx], sub(self.probs), sub(self.embeddings), self.labeled_embeddings,
                        sub(self.noisy_probs, axis=1))


class QueryStrategy(abc.ABC):
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if isinstance(cls.__dict__.get("name"), str):
            _REGISTRY[cls.__dict__["name"]] = cls

    def candidates(self, pool_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Which pool ids the loop must score before :meth:`select` (all, unless wrapped)."""
        return pool_ids

    def select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        """n distinct ids of ``view``."""
        if n <= 0:
            raise ValueError(f"n: got {n}; expected a positive number of samples to query")
        if n > len(view):
            raise PoolExhaustedError(len(view), n)
        for field in self.requires:
            value = getattr(view, field)
            if value is None:
                raise ValueError(f"{self.name} strategy: the pool view lacks {field!r}; expected the "
                                 "classifier's outputs for the candidates")
        idx = self._select(view, n, rng)
        return view.ids[idx]

    @abc.abstractmethod
    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices (into ``view``) of the n picks."""


class ScoreStrategy(QueryStrategy):
    """Picks the n highest scores (ties broken at random)."""

    @abc.abstractmethod
    def scores(self, view: PoolView, rng: np.random.Generator) -> np.ndarray:
        """(N,) informativeness of each candidate: higher is queried first."""

    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        s = np.asarray(self.scores(view, rng), dtype=np.float64)
        perm = rng.permutation(len(s))
        order = perm[np.argsort(-s[perm], kind="stable")]
        return order[:n]


class SubsamplingQueryStrategy(QueryStrategy):
    """Scores only a random subset of the pool (a pool of millions costs ``size`` inferences)."""

    def __init__(self, base: QueryStrategy, size: int) -> None:
        if size <= 0:
            raise ValueError(f"subsample size: got {size}; expected a positive number")
        self.base = base
        self.size = size
        self.requires = base.requires  # type: ignore[misc]

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"subsampled({self.base.name}, {self.size})"

    def candidates(self, pool_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(pool_ids) <= self.size:
            return pool_ids
        return np.sort(rng.choice(pool_ids, self.size, replace=False))

    def _select(self, view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.base._select(view, n, rng)


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_strategy(name: str, subsample: int | None = None, **params: Any) -> QueryStrategy:
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(f"query strategy: got {name!r}; expected one of {sorted(_REGISTRY)}")
    s = _REGISTRY[name](**params)
    return SubsamplingQueryStrategy(s, subsample) if subsample else s


def _load_all() -> None:
    from molal_ray.strategies import bemps, coreset, entropy, noise_stability, random  # noqa: F401
