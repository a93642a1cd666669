"""The annotator cascade's rule (pure): when does a sample need the next stage's annotators?

A sample is *settled* by the stages asked so far when every annotator asked gave a valid answer,
all of them put the same label on top of their votes, and each gave that label at least
``min_vote_share`` of its T sampled answers. Anything else (a disagreement, an unsure
annotator, a failed call, a flagged pool row) goes on to the next stage. Annotators a sample
never reaches are absent from the annotation table: the aggregators treat them as missing.

The plan (:class:`CascadePlan`: the stages a run asks and how they were chosen) is made here for
the label job and the loop alike: :func:`plan_for` keeps the configured stages or a ranking made
earlier, :func:`needs_ranking` says when the annotators are to be ranked first, and
:func:`rank` fills the configured stage sizes with the annotators most accurate on labelled rows
first (``cascade.order: gold``; :func:`order_by_accuracy`). :func:`cascade_view`
hides, row by row, the answers the cascade would not have asked for: the rows annotated to rank
the annotators carry every annotator, and an aggregator fitted on such rows but applied to
cascaded ones learns from a pattern it never sees again (on TREC it cost the default aggregator
0.4 to 1.2 points of label accuracy more than the cascade itself: ``benchmarks/cascade.py`` with
and without ``--gold-rows full``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from molal_ray.aggregation.features import AnnotationMatrix
    from molal_ray.config.job import CascadeConfig


def settled(votes: np.ndarray, answered: np.ndarray, min_vote_share: float) -> np.ndarray:
    """``votes``: (N, A, C) vote shares of the A annotators asked so far (NaN where absent);
    ``answered``: (N, A) whether each gave a valid answer. Returns (N,) settled."""
    v = np.nan_to_num(np.asarray(votes, np.float64))
    if v.shape[1] == 0:
        return np.zeros(v.shape[0], bool)
    top = v.argmax(2)
    share = v.max(2) / np.maximum(v.sum(2), 1e-12)
    return answered.all(1) & (top == top[:, :1]).all(1) & (share >= min_vote_share).all(1)


def settled_ids(
    table: pa.Table, annotators: Sequence[str], num_classes: int, min_vote_share: float, sample_ids: Sequence[str]
) -> np.ndarray:
    """For each of ``sample_ids``: settled by ``annotators``' rows of ``table`` (the annotation
    table's columns)."""
    from molal_ray.aggregation import build_matrix

    ids = np.asarray(list(sample_ids), dtype=object)
    if not len(ids):
        return np.zeros(0, bool)
    m = build_matrix(table, num_classes, annotators=list(annotators), sample_ids=ids)
    return settled(m.votes, m.present, min_vote_share)


def stage_reached(m: AnnotationMatrix, stages: Sequence[Sequence[str]], min_vote_share: float) -> np.ndarray:
    """(S,) the index of the last stage the cascade sends each row of ``m`` to, judged from the
    row's own answers; a stage's annotator missing from ``m`` counts as not answering."""
    flat = [a for stage in stages for a in stage]
    v = m.aligned(flat)
    last = np.full(len(m), len(stages) - 1, dtype=np.int64)
    open_ = np.ones(len(m), dtype=bool)
    n = 0
    for k, stage in enumerate(stages[:-1]):
        n += len(stage)
        ok = open_ & settled(v.votes[:, :n], v.present[:, :n], min_vote_share)
        last[ok] = k
        open_ &= ~ok
    return last


def cascade_view(m: AnnotationMatrix, stages: Sequence[Sequence[str]], min_vote_share: float) -> AnnotationMatrix:
    """``m`` with the answers of stages a row would not have reached made absent. A table the
    cascade wrote is unchanged; rows annotated by everyone (to rank the annotators, or before the
    cascade was configured) look as the cascade would have left them. Annotators in no stage are
    kept as they are."""
    from molal_ray.aggregation.features import AnnotationMatrix

    last = stage_reached(m, stages, min_vote_share)
    hide = np.zeros(m.present.shape, dtype=bool)
    for k, stage in enumerate(stages):
        for a in stage:
            if a in m.annotators:
                hide[:, m.annotators.index(a)] = last < k
    if not (hide & m.present).any():
        return m
    probs, votes = m.probs.copy(), m.votes.copy()
    probs[hide] = np.nan
    votes[hide] = np.nan
    return AnnotationMatrix(m.sample_ids, m.annotators, probs, votes, m.present & ~hide, m.embeddings)


def order_by_accuracy(
    m: AnnotationMatrix, rows: np.ndarray, y: np.ndarray, stages: Sequence[Sequence[str]]
) -> tuple[list[list[str]], dict[str, float]]:
    """The stages refilled, keeping their sizes, with the annotators ordered by the accuracy of
    their top vote on ``rows`` of ``m`` (true classes ``y``; a row an annotator did not answer
    counts as wrong), ties in the configured order. Returns the stages and each accuracy."""
    flat = [a for stage in stages for a in stage]
    v = m.aligned(flat)
    rows = np.asarray(rows, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    acc: dict[str, float] = {}
    for j, a in enumerate(flat):
        top = np.nan_to_num(v.votes[rows, j]).argmax(1) if len(rows) else np.zeros(0, np.int64)
        right = v.present[rows, j] & (top == y)
        acc[a] = float(right.mean()) if len(rows) else 0.0
    ranked = sorted(flat, key=lambda a: (-acc[a], flat.index(a)))
    out, i = [], 0
    for stage in stages:
        out.append(ranked[i : i + len(stage)])
        i += len(stage)
    return out, acc


def same_shape(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> bool:
    """The same annotators in stages of the same sizes, whatever their order: a ranking made for
    stages ``a`` still serves a config that lists ``b``."""
    return sorted(x for st in a for x in st) == sorted(x for st in b for x in st) and [len(st) for st in a] == [
        len(st) for st in b
    ]


@dataclass(frozen=True)
class CascadePlan:
    """The stages a run asks, in order, and how they were chosen: what a label output keeps in
    ``cascade.json`` (read by ``molal-ray aggregate``) and a loop in its state."""

    stages: list[list[str]]
    min_vote_share: float
    order: str = "config"  # 'config': as listed; 'gold': ranked on labelled rows
    accuracy_on_gold: dict[str, float] = field(default_factory=dict)
    gold_rows: int = 0

    @property
    def annotators(self) -> list[str]:
        return [a for stage in self.stages for a in stage]

    def view(self, m: AnnotationMatrix) -> AnnotationMatrix:
        """``m`` as this cascade leaves each row (:func:`cascade_view`)."""
        return cascade_view(m, self.stages, self.min_vote_share)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"order": self.order, "stages": self.stages, "min_vote_share": self.min_vote_share}
        if self.order == "gold":
            d.update(accuracy_on_gold=self.accuracy_on_gold, gold_rows=self.gold_rows)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], min_vote_share: float | None = None) -> CascadePlan:
        """A saved plan; a loop state saved before plans kept their order and rule has a ranking
        only (``stages``, ``accuracy_on_gold``, ``gold_rows``)."""
        ranked = "accuracy_on_gold" in d
        share = d.get("min_vote_share", min_vote_share)
        return cls(
            stages=[list(s) for s in d["stages"]],
            min_vote_share=float(1.0 if share is None else share),
            order=str(d.get("order", "gold" if ranked else "config")),
            accuracy_on_gold=dict(d.get("accuracy_on_gold") or {}),
            gold_rows=int(d.get("gold_rows") or 0),
        )


def _ranking(previous: Mapping[str, Any] | None) -> bool:
    return bool(previous) and "accuracy_on_gold" in previous  # type: ignore[operator]


def needs_ranking(config: CascadeConfig, previous: Mapping[str, Any] | None) -> bool:
    """``order: gold`` and no ranking made earlier (``previous``: a saved plan) for stages of the
    configured shape: every annotator is to label the gold rows first (:func:`rank`)."""
    return config.order == "gold" and not (
        _ranking(previous)
        and same_shape(
            previous["stages"],  # type: ignore[index]
            config.stages,
        )
    )


def plan_for(config: CascadeConfig, previous: Mapping[str, Any] | None = None) -> CascadePlan:
    """The plan a run follows without ranking: with ``order: gold``, the ranking made earlier for
    stages of this shape (a resumed run keeps it; the rule is the config's); else, and until the
    annotators are ranked, the stages as configured."""
    if config.order == "gold" and not needs_ranking(config, previous):
        assert previous is not None
        return CascadePlan.from_dict({**previous, "order": "gold", "min_vote_share": config.min_vote_share})
    return CascadePlan(stages=[list(s) for s in config.stages], min_vote_share=config.min_vote_share)


def everyone(config: CascadeConfig) -> list[list[str]]:
    """One stage of every annotator: how the rows that rank them are asked."""
    return [[a for stage in config.stages for a in stage]]


def rank(config: CascadeConfig, m: AnnotationMatrix, rows: np.ndarray, y: np.ndarray) -> CascadePlan:
    """The plan ranked on ``rows`` of ``m`` (labelled ``y``), every annotator having answered them:
    the configured stage sizes refilled by accuracy (:func:`order_by_accuracy`)."""
    stages, acc = order_by_accuracy(m, rows, y, config.stages)
    return CascadePlan(
        stages=stages, min_vote_share=config.min_vote_share, order="gold", accuracy_on_gold=acc, gold_rows=len(rows)
    )
