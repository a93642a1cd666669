"""The Ray Data stage of `molal-ray predict`: prepared pool rows through the classifier, into parts.

A callable class for ``Dataset.map_batches`` (an actor pool: the classifier loads once per actor,
on a GPU when the actor has one). Like the label job's annotate stage it skips the rows the table
already holds (:class:`~molal_ray.pipeline.output.DoneIndex`), writes a block's rows as one
atomic part per bucket (``write_part``: a retried block writes the same part again, never a
second copy) and returns only counts, so the driver never holds the pool.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from molal_ray import schema
from molal_ray.exceptions import ConfigError, SchemaError, one_line
from molal_ray.pipeline.annotate_stage import INPUT_COLUMNS
from molal_ray.pipeline.output import DoneIndex, write_part
from molal_ray.pipeline.pool_store import BUCKET
from molal_ray.pipeline.prepare import ID_HASH
from molal_ray.schema import PREDICTIONS
from molal_ray.storage import Location, resolve

PREDICT_STATS = pa.schema([("source", pa.string()), ("rows", pa.int64())])
FLAGGED = "flagged"  # the stats' source of rows without a label (a flagged pool row)


def prediction_rows(
    ids: list[str],
    probs: np.ndarray,
    labels: list[str],
    known: dict[str, tuple[str, str, float]] | None = None,
    warnings: list[str | None] | None = None,
) -> pa.Table:
    """Rows of the predictions table for usable texts: the classifier's top label, or the label a
    ``known`` row (id -> (label, source, confidence)) already has; ``probs`` the classifier's."""
    n = len(ids)
    top = probs.argmax(1) if n else np.zeros(0, np.int64)
    lab = np.asarray(labels, dtype=object)
    label = lab[top].tolist()
    conf = probs.max(1).astype(np.float32) if n else np.zeros(0, np.float32)
    source = [schema.SOURCE_CLASSIFIER] * n
    if known:
        conf = conf.copy()
        for i, sid in enumerate(ids):
            hit = known.get(sid)
            if hit is not None:
                label[i], source[i], conf[i] = hit
    c = len(labels)
    offsets = pa.array(np.arange(0, n * c + 1, c, dtype=np.int32))
    return pa.table(
        {
            schema.SAMPLE_ID: pa.array(ids, pa.string()),
            schema.LABEL: pa.array(label, pa.string()),
            schema.CONFIDENCE: pa.array(conf, pa.float32()),
            schema.SOURCE: pa.array(source, pa.string()),
            schema.PROBS: pa.ListArray.from_arrays(offsets, pa.array(probs.astype(np.float32).ravel(), pa.float32())),
            schema.ERROR: pa.nulls(n, pa.string()),
            schema.WARNING: pa.array(warnings if warnings is not None else [None] * n, pa.string()),
        },
        schema=schema.PREDICTION_SCHEMA,
    )


def flagged_rows(ids: list[str], errors: list[str], warnings: list[str | None]) -> pa.Table:
    """Rows of flagged pool rows: no label, the pool's error kept."""
    n = len(ids)
    return pa.table(
        {
            schema.SAMPLE_ID: pa.array(ids, pa.string()),
            schema.LABEL: pa.nulls(n, pa.string()),
            schema.CONFIDENCE: pa.nulls(n, pa.float32()),
            schema.SOURCE: pa.nulls(n, pa.string()),
            schema.PROBS: pa.nulls(n, pa.list_(pa.float32())),
            schema.ERROR: pa.array(errors, pa.string()),
            schema.WARNING: pa.array(warnings, pa.string()),
        },
        schema=schema.PREDICTION_SCHEMA,
    )


def predict_stats(table: pa.Table) -> pa.Table:
    """Rows written per source (``flagged`` for rows without a label)."""
    src = pc.fill_null(table.column(schema.SOURCE), FLAGGED)
    vc = pc.value_counts(src)
    return pa.table(
        {"source": vc.field("values"), "rows": pc.cast(vc.field("counts"), pa.int64())}, schema=PREDICT_STATS
    )


class PredictStage:
    """``map_batches`` UDF: prepared pool rows in, rows written per source out (rows go to parts)."""

    def __init__(
        self,
        model: str,
        labels: list[str],
        parts_dir: Location | str,
        done: DoneIndex,
        known: pa.Table | None = None,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int = 128,
    ) -> None:
        import torch

        from molal_ray.products.model import load_classifier

        if threads:
            torch.set_num_threads(threads)
        # A model that cannot be loaded fails the first block, not the actor's creation: Ray reports an
        # actor that dies in its constructor without the error of ours inside (and retries it).
        self.load_error: Exception | None = None
        try:
            self.classifier = load_classifier(model, device=device)
        except Exception as exc:  # noqa: BLE001 - whatever the loader raises, the user reads one line naming it
            self.load_error = ConfigError(
                f"--model: {model} cannot be loaded on a predictor: {type(exc).__name__}: {one_line(exc)}"
            )
        else:
            if self.classifier.labels != labels:  # checked before the job; a folder changed since is refused here
                self.load_error = SchemaError(
                    f"model {model}: labels {self.classifier.labels}; the job was started for {labels}"
                )
        self.labels = labels
        self.parts_dir = resolve(parts_dir)
        self.done = done
        self.batch_size = batch_size
        self.known: dict[str, tuple[str, str, float]] = {}
        if known is not None and known.num_rows:
            conf = pc.fill_null(known.column(schema.CONFIDENCE), 1.0).to_pylist()
            self.known = {
                sid: (lab, src, float(c))
                for sid, lab, src, c in zip(
                    known.column(schema.SAMPLE_ID).to_pylist(),
                    known.column(schema.LABEL).to_pylist(),
                    known.column(schema.SOURCE).to_pylist(),
                    conf,
                )
            }

    def __call__(self, block: pa.Table) -> pa.Table:
        if self.load_error is not None:
            raise self.load_error
        missing = [c for c in INPUT_COLUMNS if c not in block.column_names]
        if missing:
            raise SchemaError(f"predict stage: input lacks columns {missing}; got {block.column_names}")
        buckets = block.column(BUCKET).to_numpy()
        hashes = block.column(ID_HASH).to_numpy()
        need = np.ones(block.num_rows, dtype=bool)
        for b in np.unique(buckets):
            m = buckets == b
            need[m] = ~self.done.mask("", hashes[m], int(b))
        if not need.any():
            return PREDICT_STATS.empty_table()
        todo = block.filter(pa.array(need))
        buckets = buckets[need]
        bad = pc.is_valid(todo.column(schema.POOL_ERROR)).to_numpy(zero_copy_only=False)
        ids = todo.column(schema.SAMPLE_ID).to_pylist()
        texts = todo.column(schema.TEXT).to_pylist()
        warns = todo.column(schema.POOL_WARNING).to_pylist()
        errors = todo.column(schema.POOL_ERROR).to_pylist()
        good = np.flatnonzero(~bad)
        flag = np.flatnonzero(bad)
        tables, row_buckets = [], []
        if good.size:
            probs = self.classifier.predict_proba([texts[i] for i in good], batch_size=self.batch_size)
            tables.append(
                prediction_rows([ids[i] for i in good], probs, self.labels, self.known, [warns[i] for i in good])
            )
            row_buckets.append(buckets[good])
        if flag.size:
            tables.append(flagged_rows([ids[i] for i in flag], [errors[i] for i in flag], [warns[i] for i in flag]))
            row_buckets.append(buckets[flag])
        table = pa.concat_tables(tables)
        rb = np.concatenate(row_buckets)
        for b in np.unique(rb):
            write_part(self.parts_dir, table.filter(pa.array(rb == b)), int(b), PREDICTIONS)
        return predict_stats(table)
