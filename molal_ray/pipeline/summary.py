"""The closing summary of a label run, computed from the whole annotation table."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from molal_ray import schema
from molal_ray.pipeline.output import iter_annotation_table
from molal_ray.storage import Location


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
    annotate_s: float = 0.0  # the part of wall_time_s spent streaming rows through the annotators
    llm_calls_per_text: float = (
        0.0  # (sample, annotator) pairs sent to an LLM per usable text (a cascade: < annotators)
    )
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    warnings_by_kind: dict[str, int] = field(default_factory=dict)
    annotators: dict[str, AnnotatorSummary] = field(default_factory=dict)
    cascade: dict[str, Any] | None = None  # the stages used (``OUT/cascade.json``); None: every annotator

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kinds(col: pa.ChunkedArray | pa.Array, split_parts: bool) -> Counter[str]:
    """Counts of the kinds (text before the first colon) of a string column's non-null values;
    ``split_parts`` counts each "; "-separated part of a value (warnings hold several)."""
    vals = pc.drop_null(col)
    if split_parts:
        vals = pc.list_flatten(pc.split_pattern(vals, "; "))
    kinds = pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(vals, ":", max_splits=1), 0))
    vc = pc.value_counts(kinds)
    return Counter(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))


def summarise_table(path: str | Location) -> tuple[int, dict[str, int], dict[str, int], dict[str, AnnotatorSummary]]:
    """Rows, errors and warnings by kind, and per-annotator counts of the whole table, computed
    batch by batch with Arrow compute (memory stays flat however large the table)."""
    cols = [schema.ANNOTATOR, schema.ERROR, schema.WARNING, schema.N_INVALID, schema.N_SAMPLES]
    n_rows = 0
    err_kinds: Counter[str] = Counter()
    warn_kinds: Counter[str] = Counter()
    per: dict[str, list[int]] = {}
    for batch in iter_annotation_table(path, columns=cols):
        if batch.num_rows == 0:
            continue
        t = pa.Table.from_batches([batch])
        n_rows += t.num_rows
        err_kinds += _kinds(t.column(schema.ERROR), split_parts=False)
        warn_kinds += _kinds(t.column(schema.WARNING), split_parts=True)
        g = (
            pa.table(
                {
                    "a": t.column(schema.ANNOTATOR),
                    "e": pc.cast(pc.is_valid(t.column(schema.ERROR)), pa.int64()),
                    "w": pc.cast(pc.is_valid(t.column(schema.WARNING)), pa.int64()),
                    "i": pc.cast(t.column(schema.N_INVALID), pa.int64()),
                    "n": pc.cast(t.column(schema.N_SAMPLES), pa.int64()),
                }
            )
            .group_by("a")
            .aggregate([("a", "count"), ("e", "sum"), ("w", "sum"), ("i", "sum"), ("n", "sum")])
        )
        for row in g.to_pylist():
            acc = per.setdefault(row["a"], [0, 0, 0, 0, 0])
            for j, k in enumerate(("a_count", "e_sum", "w_sum", "i_sum", "n_sum")):
                acc[j] += int(row[k] or 0)
    summaries = {
        name: AnnotatorSummary(rows=v[0], errors=v[1], invalid_vote_rate=v[3] / v[4] if v[4] else 0.0, warnings=v[2])
        for name, v in sorted(per.items())
    }
    return n_rows, dict(err_kinds), dict(warn_kinds), summaries
