"""From the long annotation table to dense per-sample arrays (vectorised, no per-row objects).

``AnnotationMatrix`` holds, for S samples, A annotators and C classes: ``probs`` and ``votes``
of shape (S, A, C) and a ``present`` mask (S, A). An annotator missing for a sample (an error
row, no row, an annotator added later) is ``present == False`` and its features are NaN, which
the meta-learner treats as missing (never as zero). Optionally it also holds each sample's text
embedding (S, D) (``with_embeddings``): what a text-aware aggregator reads besides the answers;
a row without one is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from molal_ray import schema
from molal_ray.exceptions import SchemaError

REQUIRED = (schema.SAMPLE_ID, schema.ANNOTATOR, schema.PROBS, schema.VOTES)


@dataclass
class AnnotationMatrix:
    sample_ids: np.ndarray  # (S,) object
    annotators: list[str]
    probs: np.ndarray  # (S, A, C) float32, NaN where absent
    votes: np.ndarray  # (S, A, C) float32, NaN where absent
    present: np.ndarray  # (S, A) bool
    embeddings: np.ndarray | None = None  # (S, D) float32, NaN rows where a sample has none

    @property
    def num_classes(self) -> int:
        return self.probs.shape[2]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def take(self, idx: np.ndarray) -> AnnotationMatrix:
        return AnnotationMatrix(
            self.sample_ids[idx],
            self.annotators,
            self.probs[idx],
            self.votes[idx],
            self.present[idx],
            None if self.embeddings is None else self.embeddings[idx],
        )

    @property
    def has_embedding(self) -> np.ndarray:
        """(S,) whether each sample has a text embedding (all False without embeddings)."""
        if self.embeddings is None:
            return np.zeros(len(self), bool)
        return np.isfinite(self.embeddings).all(1)

    def with_embeddings(self, ids: np.ndarray, embeddings: np.ndarray) -> AnnotationMatrix:
        """The matrix with the embeddings of its samples taken from ``embeddings`` (N, D), whose
        rows are the samples ``ids``: a sample of the matrix that ``ids`` lacks has none (NaN),
        ids the matrix lacks are ignored. Raises :class:`SchemaError` when the array is not 2-D
        or its rows and ids differ in number, or an id repeats."""
        E = np.asarray(embeddings)
        ids = np.asarray(ids, dtype=object)
        if E.ndim != 2 or len(E) != len(ids) or E.shape[1] == 0:
            raise SchemaError(
                f"embeddings: expected one vector per id, (N, D) with N = {len(ids)} ids; "
                f"got an array of shape {E.shape}"
            )
        index = pd.Index(ids)
        if not index.is_unique:
            raise SchemaError(
                f"embeddings: {int(index.duplicated().sum())} ids appear more than once "
                f"(first: {index[index.duplicated()][0]!r})"
            )
        if len(ids) == len(self) and np.array_equal(ids, self.sample_ids):  # already aligned: no copy
            return replace(self, embeddings=E if E.dtype == np.float32 else E.astype(np.float32))
        pos = index.get_indexer(self.sample_ids)
        out = np.full((len(self), E.shape[1]), np.nan, np.float32)
        for start in range(0, len(self), 65_536):  # in chunks: no second full-size temporary
            part = pos[start : start + 65_536]
            hit = np.flatnonzero(part >= 0)
            out[start + hit] = E[part[hit]]
        return replace(self, embeddings=out)

    def aligned(self, annotators: list[str]) -> AnnotationMatrix:
        """The matrix with annotator columns in this order (a fitted aggregator's): annotators it
        does not name are dropped, named ones it lacks are absent (NaN, not present)."""
        if list(annotators) == list(self.annotators):
            return self
        S, _, C = self.probs.shape
        P = np.full((S, len(annotators), C), np.nan, np.float32)
        V = np.full_like(P, np.nan)
        present = np.zeros((S, len(annotators)), bool)
        for j, a in enumerate(annotators):
            if a in self.annotators:
                i = self.annotators.index(a)
                P[:, j], V[:, j], present[:, j] = self.probs[:, i], self.votes[:, i], self.present[:, i]
        return AnnotationMatrix(self.sample_ids, list(annotators), P, V, present, self.embeddings)

    def features(self) -> np.ndarray:
        """The paper's [z_1, c_1, ..., z_N, c_N] per sample: (S, A * 2C), NaN where absent."""
        S, A, C = self.probs.shape
        return np.concatenate([self.probs, self.votes], axis=2).reshape(S, A * 2 * C)


def _fixed_list(col: pa.ChunkedArray, name: str, num_classes: int, valid: np.ndarray) -> np.ndarray:
    """(N, C) float32 from a list column; rows not ``valid`` become NaN."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr.type, pa.FixedSizeListType):
        arr = arr.cast(pa.list_(arr.type.value_type))
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    lengths = np.where(np.isnan(lengths.astype(float)), -1, lengths).astype(np.int64)
    bad_len = valid & (lengths != num_classes)
    if bad_len.any():
        i = int(np.flatnonzero(bad_len)[0])
        raise SchemaError(
            f"annotation table: column {name!r} has {int(bad_len.sum())} rows of the wrong length "
            f"(first at row {i}: got {lengths[i]} values); expected {num_classes} (the label set)"
        )
    out = np.full((len(arr), num_classes), np.nan, dtype=np.float32)
    if valid.any():
        taken = arr.filter(pa.array(valid))
        flat = pc.list_flatten(taken).to_numpy(zero_copy_only=False).astype(np.float32)
        out[valid] = flat.reshape(-1, num_classes)
    return out


def build_matrix(
    table: pa.Table, num_classes: int, annotators: list[str] | None = None, sample_ids: np.ndarray | None = None
) -> AnnotationMatrix:
    """Dense arrays from the long table. Error rows and rows with NaN/negative values are absent.

    Raises :class:`SchemaError` for a missing column or vectors of the wrong length; a NaN or
    negative value is not an error here but makes that row absent (counted by ``check_table``).
    """
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise SchemaError(f"annotation table: missing columns {missing}; got {table.column_names}")
    sid = table.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False).astype(object)
    ann = table.column(schema.ANNOTATOR).to_numpy(zero_copy_only=False).astype(object)
    if schema.ERROR in table.column_names:
        ok = pc.is_null(table.column(schema.ERROR)).to_numpy(zero_copy_only=False)
    else:
        ok = np.ones(len(sid), dtype=bool)
    ok &= pc.is_valid(table.column(schema.PROBS)).to_numpy(zero_copy_only=False)
    ok &= pc.is_valid(table.column(schema.VOTES)).to_numpy(zero_copy_only=False)
    probs = _fixed_list(table.column(schema.PROBS), schema.PROBS, num_classes, ok)
    votes = _fixed_list(table.column(schema.VOTES), schema.VOTES, num_classes, ok)
    finite = np.isfinite(probs).all(1) & np.isfinite(votes).all(1) & (probs >= 0).all(1) & (votes >= 0).all(1)
    ok &= finite
    probs[~ok] = np.nan
    votes[~ok] = np.nan

    if sample_ids is None:
        codes, uniques = pd.factorize(sid, sort=False)
        sample_ids = np.asarray(uniques, dtype=object)
    else:
        codes = pd.Index(sample_ids).get_indexer(sid)
    if annotators is None:
        annotators = sorted(set(ann.tolist()))
    a_codes = pd.Index(annotators).get_indexer(ann)
    keep = (codes >= 0) & (a_codes >= 0)
    S, A = len(sample_ids), len(annotators)
    P = np.full((S, A, num_classes), np.nan, dtype=np.float32)
    V = np.full((S, A, num_classes), np.nan, dtype=np.float32)
    present = np.zeros((S, A), dtype=bool)
    rows = keep & ok
    P[codes[rows], a_codes[rows]] = probs[rows]
    V[codes[rows], a_codes[rows]] = votes[rows]
    present[codes[rows], a_codes[rows]] = True
    # Normalise probs over the label set (a recording may not sum to 1).
    tot = np.nansum(P, axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        P = np.where(tot > 0, P / tot, np.float32(1.0 / num_classes)).astype(np.float32)
    P[~present] = np.nan
    return AnnotationMatrix(np.asarray(sample_ids, dtype=object), list(annotators), P, V, present)


def check_table(table: pa.Table, m: AnnotationMatrix) -> dict[str, int]:
    """Counts of rows treated as absent in ``m`` (built from ``table``), by reason (for the report)."""
    counts = {"error_rows": 0, "non_finite_or_negative": 0}
    if schema.ERROR in table.column_names:
        counts["error_rows"] = int(pc.sum(pc.is_valid(table.column(schema.ERROR))).as_py() or 0)
    counts["absent_pairs"] = int((~m.present).sum())
    ok = pc.is_null(table.column(schema.ERROR)) if schema.ERROR in table.column_names else None
    n_ok = int(pc.sum(ok).as_py()) if ok is not None else table.num_rows
    counts["non_finite_or_negative"] = max(0, n_ok - int(m.present.sum()))
    return counts
