"""The annotator cascade's rule (pure): when does a sample need the next stage's annotators?

A sample is *settled* by the stages asked so far when every annotator asked gave a valid answer,
all of them put the same label on top of their votes, and each gave that label at least
``min_vote_share`` of its T sampled answers. Anything else (a disagreement, an unsure
annotator, a failed call, a flagged pool row) goes on to the next stage. Annotators a sample
never reaches are absent from the annotation table: the aggregators treat them as missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def settled(votes: np.ndarray, answered: np.ndarray, min_vote_share: float) -> np.ndarray:
    """``votes``: (N, A, C) vote shares of the A annotators asked so far (NaN where absent);
    ``answered``: (N, A) whether each gave a valid answer. Returns (N,) settled."""
    v = np.nan_to_num(np.asarray(votes, np.float64))
    if v.shape[1] == 0:
        return np.zeros(v.shape[0], bool)
    top = v.argmax(2)
    share = v.max(2) / np.maximum(v.sum(2), 1e-12)
    return answered.all(1) & (top == top[:, :1]).all(1) & (share >= min_vote_share).all(1)


def settled_ids(table: pa.Table, annotators: Sequence[str], num_classes: int, min_vote_share: float,
                sample_ids: Sequence[str]) -> np.ndarray:
    """For each of ``sample_ids``: settled by ``annotators``' rows of ``table`` (the annotation
    table's columns)."""
    from molal_ray.aggregation import build_matrix

    ids = np.asarray(list(sample_ids), dtype=object)
    if not len(ids):
        return np.zeros(0, bool)
    m = build_matrix(table, num_classes, annotators=list(annotators), sample_ids=ids)
    return settled(m.votes, m.present, min_vote_share)
