"""The Ray Data stage that sends each batch to every annotator deployment and writes its part.

A callable class for ``Dataset.map_batches`` (an actor pool): it holds one Serve handle per
annotator, sends a batch to all of them at once, retries a failed call (a dead replica is
replaced by Serve; the retry is routed to a live one), turns a call that keeps failing into
flagged error rows, writes the batch's rows as one atomic part and returns per-annotator counts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from molal_ray import schema
from molal_ray.pipeline.output import is_done, write_part
from molal_ray.pipeline.prepare import ID_HASH

logger = logging.getLogger("molal_ray.pipeline")

STATS_SCHEMA = pa.schema([("annotator", pa.string()), ("rows", pa.int64()), ("errors", pa.int64()),
                          ("n_invalid", pa.int64()), ("n_samples", pa.int64())])


def _join(*parts: str | None) -> str | None:
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None


def annotation_rows(annotator: str, ids: list[str], payload: dict[str, Any],
                    pool_warnings: list[str | None]) -> pa.Table:
    """Table rows of one annotator's answer to a batch."""
    probs, votes = payload["probs"], payload["votes"]
    errors = list(payload["error"])
    probs_l = [None if e is not None else probs[i].tolist() for i, e in enumerate(errors)]
    votes_l = [None if e is not None else votes[i].tolist() for i, e in enumerate(errors)]
    warns = [_join(pw, ew) for pw, ew in zip(pool_warnings, payload["warning"])]
    return pa.table({
        schema.SAMPLE_ID: ids, schema.ANNOTATOR: [annotator] * len(ids),
        schema.PROBS: pa.array(probs_l, pa.list_(pa.float32())),
        schema.VOTES: pa.array(votes_l, pa.list_(pa.float32())),
        schema.N_INVALID: pa.array(payload["n_invalid"], pa.int32()),
        schema.N_SAMPLES: pa.array(payload["n_samples"], pa.int32()),
        schema.ERROR: pa.array(errors, pa.string()), schema.WARNING: pa.array(warns, pa.string()),
    }, schema=schema.ANNOTATION_SCHEMA)


def error_rows(annotator: str, ids: list[str], errors: list[str], warnings: list[str | None]) -> pa.Table:
    n = len(ids)
    return pa.table({
        schema.SAMPLE_ID: ids, schema.ANNOTATOR: [annotator] * n,
        schema.PROBS: pa.nulls(n, pa.list_(pa.float32())), schema.VOTES: pa.nulls(n, pa.list_(pa.float32())),
        schema.N_INVALID: pa.array(np.zeros(n, np.int32)), schema.N_SAMPLES: pa.array(np.zeros(n, np.int32)),
        schema.ERROR: pa.array(errors, pa.string()), schema.WARNING: pa.array(warnings, pa.string()),
    }, schema=schema.ANNOTATION_SCHEMA)


class AnnotateStage:
    """``map_batches`` UDF: prepared pool rows in, per-annotator counts out (rows go to parts)."""

    def __init__(self, app_name: str, annotators: list[str], parts_dir: str, done: Any,
                 max_retries: int, retry_backoff_s: float, request_timeout_s: float) -> None:
        import ray
        from ray import serve

        self.annotators = annotators
        self.handles = {a: serve.get_deployment_handle(a, app_name) for a in annotators}
        self.parts_dir = Path(parts_dir)
        self.done: dict[str, np.ndarray] = ray.get(done) if isinstance(done, ray.ObjectRef) else (done or {})
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.request_timeout_s = request_timeout_s

    def _call(self, annotator: str, ids: list[str], texts: list[str], first: Any) -> dict[str, Any]:
        """The answer of one annotator to one batch, retrying a failed call."""
        response, wait = first, self.retry_backoff_s
        for attempt in range(self.max_retries + 1):
            try:
                return response.result(timeout_s=self.request_timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failure of a remote call is retried
                if attempt == self.max_retries:
                    raise
                logger.warning("annotator %s failed a batch of %d (attempt %d/%d): %s; retrying",
                               annotator, len(ids), attempt + 1, self.max_retries + 1, exc)
                time.sleep(wait)
                wait *= 2
                response = self.handles[annotator].annotate.remote(ids, texts)
        raise AssertionError("unreachable")

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(schema.SAMPLE_ID).to_pylist()
        texts = batch.column(schema.TEXT).to_pylist()
        pool_err = batch.column(schema.POOL_ERROR).to_pylist()
        pool_warn = batch.column(schema.POOL_WARNING).to_pylist()
        hashes = batch.column(ID_HASH).to_numpy()
        bad = np.array([e is not None for e in pool_err], dtype=bool)

        tables: list[pa.Table] = []
        pending: dict[str, tuple[np.ndarray, Any]] = {}
        for a in self.annotators:
            need = ~is_done(self.done.get(a), hashes)
            flagged = np.flatnonzero(need & bad)
            if flagged.size:
                tables.append(error_rows(a, [ids[i] for i in flagged], [pool_err[i] for i in flagged],
                                         [pool_warn[i] for i in flagged]))
            todo = np.flatnonzero(need & ~bad)
            if todo.size:
                sub_ids, sub_texts = [ids[i] for i in todo], [texts[i] for i in todo]
                pending[a] = (todo, self.handles[a].annotate.remote(sub_ids, sub_texts))
        for a, (todo, response) in pending.items():
            sub_ids, sub_texts = [ids[i] for i in todo], [texts[i] for i in todo]
            sub_warn = [pool_warn[i] for i in todo]
            try:
                payload = self._call(a, sub_ids, sub_texts, response)
                tables.append(annotation_rows(a, sub_ids, payload, sub_warn))
            except Exception as exc:  # noqa: BLE001 - flagged rows, the run goes on
                msg = f"{schema.ERR_ANNOTATOR_FAILED}: {type(exc).__name__}: {str(exc)[:300]}"
                logger.error("annotator %s gave up on a batch of %d: %s", a, len(todo), msg)
                tables.append(error_rows(a, sub_ids, [msg] * len(todo), sub_warn))
        if not tables:
            return STATS_SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        write_part(self.parts_dir, table)
        return batch_stats(table)


def batch_stats(table: pa.Table) -> pa.Table:
    """Per-annotator counts of a batch's rows."""
    ann = np.asarray(table.column(schema.ANNOTATOR).to_pylist(), dtype=object)
    err = np.array([e is not None for e in table.column(schema.ERROR).to_pylist()])
    inv = table.column(schema.N_INVALID).to_numpy(zero_copy_only=False)
    ns = table.column(schema.N_SAMPLES).to_numpy(zero_copy_only=False)
    names = sorted(set(ann))
    return pa.table({
        "annotator": names,
        "rows": [int((ann == n).sum()) for n in names],
        "errors": [int(err[ann == n].sum()) for n in names],
        "n_invalid": [int(inv[ann == n].sum()) for n in names],
        "n_samples": [int(ns[ann == n].sum()) for n in names],
    }, schema=STATS_SCHEMA)
