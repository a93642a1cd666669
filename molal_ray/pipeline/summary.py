"""The closing summary of a label run, computed from the whole annotation table."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from molal_ray import schema
from molal_ray.pipeline.output import read_annotation_table


@dataclass
class AnnotatorSummary:
    rows: int
    errors: int
    invalid_vote_rate: float
    warnings: int


@dataclass
class LabelSummary:
    output: str
    pool_rows: int
    table_rows: int
    rows_written_this_run: int
    wall_time_s: float
    rows_per_s: float
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    warnings_by_kind: dict[str, int] = field(default_factory=dict)
    annotators: dict[str, AnnotatorSummary] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise_table(path: str) -> tuple[int, dict[str, int], dict[str, int], dict[str, AnnotatorSummary]]:
    cols = [schema.ANNOTATOR, schema.ERROR, schema.WARNING, schema.N_INVALID, schema.N_SAMPLES]
    t = read_annotation_table(path, columns=cols)
    ann = np.asarray(t.column(schema.ANNOTATOR).to_pylist(), dtype=object)
    errors = t.column(schema.ERROR).to_pylist()
    warnings = t.column(schema.WARNING).to_pylist()
    inv = t.column(schema.N_INVALID).to_numpy(zero_copy_only=False).astype(np.int64)
    ns = t.column(schema.N_SAMPLES).to_numpy(zero_copy_only=False).astype(np.int64)
    err_kinds = Counter(schema.error_kind(e) for e in errors if e is not None)
    warn_kinds: Counter[str] = Counter()
    for w in warnings:
        if w:
            for part in w.split("; "):
                warn_kinds[schema.error_kind(part) or part] += 1
    has_err = np.array([e is not None for e in errors], dtype=bool)
    has_warn = np.array([w is not None for w in warnings], dtype=bool)
    per: dict[str, AnnotatorSummary] = {}
    for name in sorted(set(ann.tolist())):
        m = ann == name
        total = int(ns[m].sum())
        per[name] = AnnotatorSummary(rows=int(m.sum()), errors=int(has_err[m].sum()),
                                     invalid_vote_rate=float(inv[m].sum() / total) if total else 0.0,
                                     warnings=int(has_warn[m].sum()))
    return t.num_rows, dict(err_kinds), dict(warn_kinds), per
