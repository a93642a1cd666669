"""Column names and the Arrow schema of the annotation table, in one place.

The annotation table is long: one row per (sample, annotator). ``probs`` and ``votes`` are
in label-set order; ``votes`` are shares of the T samples (they sum to 1 minus the invalid
share); ``error`` is null on good rows and says why a row carries no annotation otherwise;
``warning`` is null or notes something done to a row that still carries an annotation
(for instance a text truncated to the model's context).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SAMPLE_ID = "sample_id"
ANNOTATOR = "annotator"
PROBS = "probs"
VOTES = "votes"
N_INVALID = "n_invalid"
N_SAMPLES = "n_samples"
ERROR = "error"
WARNING = "warning"

ANNOTATION_COLUMNS = (SAMPLE_ID, ANNOTATOR, PROBS, VOTES, N_INVALID, N_SAMPLES, ERROR, WARNING)

ANNOTATION_SCHEMA = pa.schema(
    [
        pa.field(SAMPLE_ID, pa.string(), nullable=False),
        pa.field(ANNOTATOR, pa.string(), nullable=False),
        pa.field(PROBS, pa.list_(pa.float32())),
        pa.field(VOTES, pa.list_(pa.float32())),
        pa.field(N_INVALID, pa.int32()),
        pa.field(N_SAMPLES, pa.int32()),
        pa.field(ERROR, pa.string()),
        pa.field(WARNING, pa.string()),
    ]
)

# The predictions table (``molal-ray predict``): one row per pool row. ``label`` is the row's label
# and ``source`` where it came from (SOURCES); ``confidence`` is the label's probability under that
# source; ``probs`` is always the classifier's distribution, in label-set order (null on a flagged
# row, whose ``error`` says why it has no label).
LABEL = "label"
CONFIDENCE = "confidence"
SOURCE = "source"

SOURCE_CLASSIFIER = "classifier"  # the exported classifier's top label
SOURCE_MIXTURE = "mixture"  # escalated: the LLM annotators' answers, aggregated
# and the loop's own sources, for pool rows the loop had labelled: gold, human, molal, majority, annotator

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field(SAMPLE_ID, pa.string(), nullable=False),
        pa.field(LABEL, pa.string()),
        pa.field(CONFIDENCE, pa.float32()),
        pa.field(SOURCE, pa.string()),
        pa.field(PROBS, pa.list_(pa.float32())),
        pa.field(ERROR, pa.string()),
        pa.field(WARNING, pa.string()),
    ]
)


@dataclass(frozen=True)
class TableKind:
    """A table written in parts by ``pipeline/output.py``: its name (in the folder's manifest),
    its schema, and the column that with ``sample_id`` keys a row (None: ``sample_id`` alone)."""

    name: str
    schema: pa.Schema
    key: str | None

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


ANNOTATIONS = TableKind("annotations", ANNOTATION_SCHEMA, ANNOTATOR)
PREDICTIONS = TableKind("predictions", PREDICTION_SCHEMA, None)
TABLE_KINDS = {k.name: k for k in (ANNOTATIONS, PREDICTIONS)}

# Error kinds written to the ``error`` column (the text after the colon, if any, is detail).
ERR_EMPTY_TEXT = "empty_text"
ERR_INVALID_UTF8 = "invalid_utf8"
ERR_MISSING_ID = "missing_id"
ERR_DUPLICATE_ID = "duplicate_id"
ERR_NOT_TEXT = "not_text"  # a text or id value that is a list or a mapping (a JSON array, a Parquet struct)
ERR_BAD_ROW = "bad_row"  # a record the file's reader could not parse (CSV: wrong number of fields)
ERR_UNKNOWN_SAMPLE = "unknown_sample"
ERR_ANNOTATOR_FAILED = "annotator_failed"
ERR_ENGINE = "engine_error"
WARN_TRUNCATED = "truncated"

# Columns of the prepared pool stream (internal between pipeline stages).
TEXT = "text"
POOL_ERROR = "pool_error"
POOL_WARNING = "pool_warning"


def error_kind(error: str | None) -> str | None:
    """The kind of an ``error`` value: the part before the first colon."""
    if error is None:
        return None
    return error.split(":", 1)[0].strip()
