"""The coordinator: owns the loop state, picks queries, turns annotations into training rows.

:class:`Coordinator` is plain Python (tested without Ray); :data:`CoordinatorActor` is the same
class as a Ray actor, which the runner drives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from molal_ray.aggregation import Gold, build_matrix, get_aggregator
from molal_ray.loop.state import LabeledRow, LoopState
from molal_ray.strategies import PoolView, get_strategy
from molal_ray.training.losses import discrepancy_weights


class Coordinator:
    def __init__(self, state: LoopState, state_dir: str, strategy: str, subsample: int | None,
                 annotation: str, aggregator: str, alpha: float, negative_threshold: float) -> None:
        self.state = state
        self.state_dir = Path(state_dir)
        self.strategy = get_strategy(strategy, subsample=subsample)
        self.annotation = annotation
        self.aggregator = aggregator
        self.alpha = alpha
        self.negative_threshold = negative_threshold

    def get_state(self) -> LoopState:
        return self.state

    def rng(self, purpose: int, round_: int | None = None) -> np.random.Generator:
        return np.random.default_rng([self.state.seed, self.state.round if round_ is None else round_, purpose])

    def add_rows(self, rows: list[LabeledRow]) -> LoopState:
        """Round 0: the initial human labels."""
        self.state.add(rows)
        return self.state

    def candidates(self, round_: int | None = None) -> list[str]:
        """Pool ids to score in round ``round_`` (default: this one; a random subset when
        sub-sampling). The pool does not change between the end of a round and the next query, so
        the runner asks for the next round's candidates right after training and scores them
        with the test split in one pass."""
        return self.strategy.candidates(np.asarray(self.state.pool_ids, dtype=object), self.rng(1, round_)).tolist()

    def select(self, view: PoolView, n: int) -> list[str]:
        return self.strategy.select(view, min(n, len(view)), self.rng(2)).tolist()

    def assign(self, queried: list[str], table: pa.Table | None, gold_map: dict[str, int],
               previous_pred: dict[str, int]) -> dict[str, Any]:
        """Labels for the queried ids by the configured annotation mode; adds them to the state."""
        C = len(self.state.labels)
        if self.annotation == "gold":
            labels = np.array([gold_map[i] for i in queried])
            probs = np.eye(C)[labels]
        else:
            init = [r.sample_id for r in self.state.labeled if r.source == "gold"]
            m = build_matrix(table, C)
            idx = {s: i for i, s in enumerate(m.sample_ids)}
            present = [i for i in init if i in idx]
            gold = Gold(np.array([idx[i] for i in present], dtype=np.int64),
                        np.array([gold_map[i] for i in present], dtype=np.int64), C)
            rows = np.array([idx[i] for i in queried if i in idx], dtype=np.int64)
            missing = [i for i in queried if i not in idx]
            if missing:
                raise ValueError(f"{len(missing)} queried samples have no annotation (first: {missing[0]!r})")
            if self.annotation == "molal":
                agg = get_aggregator(self.aggregator).fit(m, gold)
                probs = agg.predict_proba(m.take(rows))
            elif self.annotation == "majority":
                probs = get_aggregator("majority").predict_proba(m.take(rows))
            else:  # one annotator's own majority of its samples
                a = m.annotators.index(self.annotation)
                v = np.nan_to_num(m.votes[rows, a])
                probs = np.where(v.sum(1, keepdims=True) > 0, v, 1.0 / C)
            labels = probs.argmax(1)
        source = "molal" if self.annotation == "molal" else ("gold" if self.annotation == "gold" else
                                                              ("majority" if self.annotation == "majority" else
                                                               "annotator"))
        prev = np.array([previous_pred.get(i, -1) for i in queried])
        weights = (discrepancy_weights(labels, prev, np.zeros(len(queried), bool), self.alpha)
                   if self.annotation == "molal" and previous_pred else np.ones(len(queried), np.float32))
        new = [LabeledRow(sid, int(lab), source, float(w),
                          [int(k) for k in np.flatnonzero(p < self.negative_threshold)] if source == "molal" else [])
               for sid, lab, w, p in zip(queried, labels, weights, probs)]
        self.state.add(new)
        truth = [gold_map.get(i) for i in queried]
        known = [(lab, t) for lab, t in zip(labels, truth) if t is not None]
        return {"annotation_accuracy": float(np.mean([lab == t for lab, t in known])) if known else None,
                "n_down_weighted": int((weights < 1).sum())}

    def finish_round(self, metrics: dict[str, Any]) -> LoopState:
        self.state.history.append(metrics)
        self.state.round += 1
        self.state.save(self.state_dir)
        return self.state


def coordinator_actor():  # type: ignore[no-untyped-def]
    """The Ray actor class around :class:`Coordinator` (created lazily: Ray is heavy)."""
    import ray

    return ray.remote(num_cpus=0)(Coordinator)
