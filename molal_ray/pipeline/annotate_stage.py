"""The Ray Data stage that sends each batch to every annotator deployment and writes its part.

A callable class for ``Dataset.map_batches`` (an actor pool): it holds one Serve handle per
annotator, sends a batch to all of them at once, retries a failed call (a dead replica is
replaced by Serve; the retry is routed to a live one), turns a call that keeps failing into
flagged error rows, writes the batch's rows as one atomic part and returns per-annotator counts.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from molal_ray import schema
from molal_ray.exceptions import SchemaError
from molal_ray.pipeline.output import DoneIndex, write_part
from molal_ray.pipeline.pool_store import BUCKET
from molal_ray.pipeline.prepare import ID_HASH
from molal_ray.storage import Location, resolve

logger = logging.getLogger("molal_ray.pipeline")

STATS_SCHEMA = pa.schema(
    [
        ("annotator", pa.string()),
        ("rows", pa.int64()),
        ("errors", pa.int64()),
        ("n_invalid", pa.int64()),
        ("n_samples", pa.int64()),
    ]
)


def _join(*parts: str | None) -> str | None:
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None


def _vectors(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """(N, C) floats -> a list<float32> column, null where not ``valid`` (built without a Python
    loop over rows)."""
    n, c = values.shape
    offsets = pa.array(np.arange(0, n * c + 1, c, dtype=np.int32))
    flat = pa.array(np.nan_to_num(values.astype(np.float32).ravel()), pa.float32())
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~valid))


def _rows(
    annotator: str,
    ids: list[str],
    probs: pa.Array,
    votes: pa.Array,
    n_invalid: Any,
    n_samples: Any,
    errors: list[str | None],
    warnings: list[str | None],
) -> pa.Table:
    return pa.table(
        {
            schema.SAMPLE_ID: pa.array(ids, pa.string()),
            schema.ANNOTATOR: pa.array([annotator] * len(ids), pa.string()),
            schema.PROBS: probs,
            schema.VOTES: votes,
            schema.N_INVALID: pa.array(n_invalid, pa.int32()),
            schema.N_SAMPLES: pa.array(n_samples, pa.int32()),
            schema.ERROR: pa.array(errors, pa.string()),
            schema.WARNING: pa.array(warnings, pa.string()),
        },
        schema=schema.ANNOTATION_SCHEMA,
    )


def annotation_rows(
    annotator: str, ids: list[str], payload: dict[str, Any], pool_warnings: list[str | None]
) -> pa.Table:
    """Table rows of one annotator's answer to a batch (a deployment's payload)."""
    errors = list(payload["error"])
    ok = np.array([e is None for e in errors], dtype=bool)
    warns = [_join(pw, ew) for pw, ew in zip(pool_warnings, payload["warning"])]
    return _rows(
        annotator,
        ids,
        _vectors(np.asarray(payload["probs"]), ok),
        _vectors(np.asarray(payload["votes"]), ok),
        payload["n_invalid"],
        payload["n_samples"],
        errors,
        warns,
    )


def error_rows(annotator: str, ids: list[str], errors: list[str], warnings: list[str | None]) -> pa.Table:
    """Flagged rows: no answer, the ``errors`` said (a flagged pool row, a call that kept failing)."""
    n = len(ids)
    empty = pa.nulls(n, pa.list_(pa.float32()))
    zeros = np.zeros(n, np.int32)
    return _rows(annotator, ids, empty, empty, zeros, zeros, list(errors), warnings)


def stage_options(
    cfg: Any, parts_dir: Location | str, done: DoneIndex, stages: list[list[str]] | None = None
) -> dict[str, Any]:
    """The :class:`AnnotateStage` arguments of a job (a label job's or a loop's config: its Serve
    application, annotators, pipeline settings and cascade rule), writing into ``parts_dir``:
    for the label job's stream actors, its cascade ranking and the loop's round calls alike."""
    pl = cfg.pipeline
    return {
        "app_name": cfg.ray.serve_app_name,
        "annotators": [a.name for a in cfg.annotators],
        "parts_dir": parts_dir,
        "done": done,
        "max_retries": pl.max_retries,
        "retry_backoff_s": pl.retry_backoff_s,
        "request_timeout_s": pl.request_timeout_s,
        "batch_size": pl.batch_size,
        "in_flight": pl.in_flight,
        "stages": stages or cfg.stages(),
        "num_classes": len(cfg.task.labels),
        "min_vote_share": cfg.cascade.min_vote_share if cfg.cascade else 1.0,
    }


@dataclass
class _Batch:
    """One batch of prepared rows, as the stages of a send see it."""

    table: pa.Table
    ids: list[str]
    texts: list[str]
    warnings: list[str | None]
    buckets: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> _Batch:
        return cls(
            table,
            table.column(schema.SAMPLE_ID).to_pylist(),
            table.column(schema.TEXT).to_pylist(),
            table.column(schema.POOL_WARNING).to_pylist(),
            table.column(BUCKET).to_numpy(),
        )


@dataclass
class _Send:
    """A batch sent to some annotators: rows ready at once (flagged pool rows, with their
    buckets) and the calls in flight (each annotator's row indices and response)."""

    batch: _Batch
    ready: list[tuple[pa.Table, np.ndarray]] = field(default_factory=list)
    pending: dict[str, tuple[np.ndarray, Any]] = field(default_factory=dict)


INPUT_COLUMNS = (schema.SAMPLE_ID, schema.TEXT, schema.POOL_ERROR, schema.POOL_WARNING, ID_HASH, BUCKET)


def stage_batch(keys: np.ndarray, ids: list[str], texts: list[str]) -> pa.Table:
    """The input of an :class:`AnnotateStage` called directly on usable prepared-pool rows
    (``keys``, their ids and texts): the light calls of the loop and of the cascade's ranking."""
    from molal_ray.ids import hash_ids
    from molal_ray.pipeline.prepare import split_row_keys

    n = len(ids)
    keys = np.asarray(keys, dtype=np.int64)
    return pa.table(
        {
            schema.SAMPLE_ID: pa.array(ids, pa.string()),
            schema.TEXT: pa.array(texts, pa.string()),
            schema.POOL_ERROR: pa.nulls(n, pa.string()),
            schema.POOL_WARNING: pa.nulls(n, pa.string()),
            ID_HASH: pa.array(hash_ids(ids), pa.uint64()),
            BUCKET: pa.array(split_row_keys(keys)[0].astype(np.int32)),
        }
    )


class AnnotateStage:
    """``map_batches`` UDF: prepared pool rows in, per-annotator counts out (rows go to parts).

    Also called directly, on one small batch, by the loop's coordinator (the light annotate call
    of a round): same retries, same flagged rows, same exactly-once parts."""

    def __init__(
        self,
        app_name: str,
        annotators: list[str],
        parts_dir: Location | str,
        done: DoneIndex,
        max_retries: int,
        retry_backoff_s: float,
        request_timeout_s: float,
        batch_size: int = 256,
        in_flight: int = 1,
        stages: list[list[str]] | None = None,
        num_classes: int = 0,
        min_vote_share: float = 0.8,
        handles: dict[str, Any] | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.in_flight = max(1, in_flight)
        # A cascade: each batch goes to the first stage; the rows the stages so far leave
        # unsettled go on to the next (aggregation/cascade.py). No cascade: one stage.
        self.stages = stages or [list(annotators)]
        self.annotators = [a for stage in self.stages for a in stage]
        self.num_classes = num_classes
        self.min_vote_share = min_vote_share
        if handles is None:  # the running deployments (``handles``: stand-ins, in tests)
            from ray import serve

            handles = {a: serve.get_deployment_handle(a, app_name) for a in self.annotators}
        self.handles = handles
        self.parts_dir = resolve(parts_dir)
        self.done = done
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.request_timeout_s = request_timeout_s
        # Few-shot demonstrations sent with every call (a loop whose task.few_shot.examples is 'loop').
        self.examples: list[dict[str, Any]] | None = None

    def _request(self, annotator: str, ids: list[str], texts: list[str]) -> Any:
        handle = self.handles[annotator].annotate
        return handle.remote(ids, texts) if self.examples is None else handle.remote(ids, texts, self.examples)

    def _call(self, annotator: str, ids: list[str], texts: list[str], first: Any) -> dict[str, Any]:
        """The answer of one annotator to one batch, retrying a failed call."""
        response, wait = first, self.retry_backoff_s
        for attempt in range(self.max_retries + 1):
            try:
                return response.result(timeout_s=self.request_timeout_s)
            except Exception as exc:  # noqa: BLE001 - any failure of a remote call is retried
                if attempt == self.max_retries:
                    raise
                logger.warning(
                    "annotator %s failed a batch of %d (attempt %d/%d): %s; retrying",
                    annotator,
                    len(ids),
                    attempt + 1,
                    self.max_retries + 1,
                    exc,
                )
                time.sleep(wait)
                wait *= 2
                response = self._request(annotator, ids, texts)
        raise AssertionError("unreachable")

    def _need(self, annotator: str, hashes: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        need = np.ones(len(hashes), dtype=bool)
        for b in np.unique(buckets):
            m = buckets == b
            need[m] = ~self.done.mask(annotator, hashes[m], int(b))
        return need

    def forget(self) -> None:
        """Drop what was read of the table (the loop's table grows between rounds)."""
        self.done.forget()

    def _submit(self, batch: _Batch, annotators: list[str] | None = None, rows: np.ndarray | None = None) -> _Send:
        """Send one batch (its ``rows`` only, when given) to every annotator of ``annotators``
        (the first stage by default) that still owes them."""
        pool_err = batch.table.column(schema.POOL_ERROR).to_pylist()
        hashes = batch.table.column(ID_HASH).to_numpy()
        bad = np.array([e is not None for e in pool_err], dtype=bool)
        send = _Send(batch)
        for a in annotators or self.stages[0]:
            need = self._need(a, hashes, batch.buckets)
            if rows is not None:
                need &= rows
            flagged = np.flatnonzero(need & bad)
            if flagged.size:
                send.ready.append(
                    (
                        error_rows(
                            a,
                            [batch.ids[i] for i in flagged],
                            [pool_err[i] for i in flagged],
                            [batch.warnings[i] for i in flagged],
                        ),
                        batch.buckets[flagged],
                    )
                )
            todo = np.flatnonzero(need & ~bad)
            if todo.size:
                send.pending[a] = (todo, self._request(a, [batch.ids[i] for i in todo], [batch.texts[i] for i in todo]))
        return send

    def _finish(self, send: _Send) -> pa.Table | None:
        """Finish a batch's first stage, then send the rows it leaves unsettled through the
        next stages one after another; the batch's rows."""
        first = self._collect(send)
        tables = [first] if first is not None else []
        for k in range(1, len(self.stages)):
            earlier = [a for stage in self.stages[:k] for a in stage]
            go_on = ~self._settled(send.batch, earlier, tables)
            if not go_on.any():
                break
            t = self._collect(self._submit(send.batch, self.stages[k], go_on))
            if t is not None:
                tables.append(t)
        return pa.concat_tables(tables) if tables else None

    def _settled(self, batch: _Batch, earlier: list[str], fresh: list[pa.Table]) -> np.ndarray:
        """Which rows of the batch the ``earlier`` annotators settled: their answers written now
        (``fresh``) and, on a resumed run, those the table already held."""
        from molal_ray.aggregation.cascade import settled_ids

        ids = np.asarray(batch.ids, dtype=object)
        want = pa.array(earlier, pa.string())
        parts = [t.filter(pc.is_in(t.column(schema.ANNOTATOR), value_set=want)) for t in fresh]
        if not self.done.empty:
            # every annotator before the last stage, so that one read per bucket serves each stage
            before_last = self.annotators[: -len(self.stages[-1])]
            for b in np.unique(batch.buckets):
                old = self.done.rows(int(b), before_last)
                old = old.filter(pc.is_in(old.column(schema.ANNOTATOR), value_set=want))
                mine = pa.array(ids[batch.buckets == b].tolist(), pa.string())
                parts.append(old.filter(pc.is_in(old.column(schema.SAMPLE_ID), value_set=mine)))
        answers = pa.concat_tables([schema.ANNOTATION_SCHEMA.empty_table(), *parts])
        return settled_ids(answers, earlier, self.num_classes, self.min_vote_share, ids.tolist())

    def _collect(self, send: _Send) -> pa.Table | None:
        """Wait for the answers of one send (retrying failed calls), write its parts; its rows."""
        batch, tables = send.batch, list(send.ready)
        for a, (todo, response) in send.pending.items():
            sub_ids, sub_texts = [batch.ids[i] for i in todo], [batch.texts[i] for i in todo]
            sub_warn = [batch.warnings[i] for i in todo]
            try:
                payload = self._call(a, sub_ids, sub_texts, response)
                tables.append((annotation_rows(a, sub_ids, payload, sub_warn), batch.buckets[todo]))
            except Exception as exc:  # noqa: BLE001 - flagged rows, the run goes on
                msg = f"{schema.ERR_ANNOTATOR_FAILED}: {type(exc).__name__}: {str(exc)[:300]}"
                logger.error("annotator %s gave up on a batch of %d: %s", a, len(todo), msg)
                tables.append((error_rows(a, sub_ids, [msg] * len(todo), sub_warn), batch.buckets[todo]))
        if not tables:
            return None
        table = pa.concat_tables([t for t, _ in tables])
        row_buckets = np.concatenate([b for _, b in tables])
        for b in np.unique(row_buckets):
            write_part(self.parts_dir, table.filter(pa.array(row_buckets == b)), int(b))
        return table

    def __call__(self, block: pa.Table) -> pa.Table:
        """Annotate a block of prepared rows: cut into batches of ``batch_size``, with up to
        ``in_flight`` batches sent to the annotators at once (the oldest is finished first), so
        one actor keeps every replica busy however the rows arrive in blocks."""
        missing = [c for c in INPUT_COLUMNS if c not in block.column_names]
        if missing:
            raise SchemaError(f"annotate stage: input lacks columns {missing}; got {block.column_names}")
        window: deque[_Send] = deque()
        done: list[pa.Table] = []
        for start in range(0, block.num_rows, self.batch_size):
            window.append(self._submit(_Batch.of(block.slice(start, self.batch_size))))
            if len(window) >= self.in_flight:
                if (t := self._finish(window.popleft())) is not None:
                    done.append(t)
        while window:
            if (t := self._finish(window.popleft())) is not None:
                done.append(t)
        return batch_stats(pa.concat_tables(done)) if done else STATS_SCHEMA.empty_table()


def batch_stats(table: pa.Table) -> pa.Table:
    """Per-annotator counts of a batch's rows."""
    has_err = pc.is_valid(table.column(schema.ERROR))
    t = pa.table(
        {
            "annotator": table.column(schema.ANNOTATOR),
            "err": pc.cast(has_err, pa.int64()),
            "inv": pc.cast(table.column(schema.N_INVALID), pa.int64()),
            "ns": pc.cast(table.column(schema.N_SAMPLES), pa.int64()),
        }
    )
    g = t.group_by("annotator").aggregate([("annotator", "count"), ("err", "sum"), ("inv", "sum"), ("ns", "sum")])
    g = g.sort_by("annotator")
    return pa.table(
        {
            "annotator": g.column("annotator"),
            "rows": g.column("annotator_count"),
            "errors": g.column("err_sum"),
            "n_invalid": g.column("inv_sum"),
            "n_samples": g.column("ns_sum"),
        },
        schema=STATS_SCHEMA,
    )
