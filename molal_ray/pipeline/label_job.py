"""`molal-ray label`: stream the pool through every annotator into the annotation table.

Flow: read the pool (Ray Data, streamed) -> decode and flag rows -> find duplicate ids (a pass
over 64-bit id hashes only) -> an actor pool sends batches to the annotator deployments and
writes atomic parts -> the driver only sees per-batch counts (for progress) and the summary.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from molal_ray.config import LabelJobConfig, PoolConfig
from molal_ray.engines.base import Engine
from molal_ray.pipeline.annotate_stage import AnnotateStage
from molal_ray.pipeline.output import SUMMARY, load_done, open_output
from molal_ray.pipeline.pool import read_pool
from molal_ray.pipeline.prepare import ID_HASH, find_duplicate_hashes, prepare_batch, resolve_duplicates
from molal_ray.pipeline.summary import LabelSummary, summarise_table
from molal_ray.runtime import deploy_annotators, ensure_ray, undeploy_annotators

logger = logging.getLogger("molal_ray.label")

ProgressFn = Callable[[dict[str, int], int], None]
"""Called with the rows written so far per annotator (this run) and the rows expected per annotator."""


def _in_hashes(batch: pa.Table, hashes: np.ndarray, keep: bool) -> pa.Table:
    h = batch.column(ID_HASH).to_numpy()
    mask = np.isin(h, hashes)
    return batch.filter(pa.array(mask if keep else ~mask))


def build_prepared(pool: PoolConfig, cpus: float):  # type: ignore[no-untyped-def]
    """The pool as prepared rows (ids and texts decoded, bad rows flagged), lazily."""
    return read_pool(pool, num_cpus=cpus).map_batches(
        prepare_batch, fn_kwargs={"max_text_chars": pool.max_text_chars}, batch_format="pyarrow",
        batch_size=None, num_cpus=cpus)


def plan_stream(cfg: LabelJobConfig):  # type: ignore[no-untyped-def]
    """The prepared pool with duplicate ids resolved, and its row count."""
    import ray.data

    prepared = build_prepared(cfg.pool, cfg.pipeline.stage_num_cpus)
    chunks = [b[ID_HASH].to_numpy() for b in
              prepared.select_columns([ID_HASH]).iter_batches(batch_format="pyarrow", batch_size=None)]
    hashes = np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)
    dups = find_duplicate_hashes(hashes)
    if dups.size == 0:
        return prepared, int(hashes.size)
    logger.warning("%d ids occur more than once in the pool; later copies are flagged", dups.size)
    cpus = cfg.pipeline.stage_num_cpus
    clean = prepared.map_batches(_in_hashes, fn_kwargs={"hashes": dups, "keep": False},
                                 batch_format="pyarrow", batch_size=None, num_cpus=cpus)
    dup_rows = pa.concat_tables(list(
        build_prepared(cfg.pool, cpus).map_batches(_in_hashes, fn_kwargs={"hashes": dups, "keep": True},
                                                   batch_format="pyarrow", batch_size=None, num_cpus=cpus)
        .iter_batches(batch_format="pyarrow", batch_size=None)))
    resolved = ray.data.from_arrow(resolve_duplicates(dup_rows))
    return clean.union(resolved), int(hashes.size)


def run_label_job(cfg: LabelJobConfig, *, engine_cls: type[Engine] | None = None,
                  progress: ProgressFn | None = None, deploy: bool = True) -> LabelSummary:
    """Label the pool; resumes from what the output folder already holds. ``deploy=False`` uses
    the annotator application already running under ``cfg.ray.serve_app_name`` as it is (the
    loop deploys once and labels every round's queries through it)."""
    import ray

    t0 = time.monotonic()
    labels = cfg.task.labels
    names = [a.name for a in cfg.annotators]
    out = open_output(cfg.output.path, cfg.output.mode, labels, names)
    done = load_done(out)
    ensure_ray(cfg.ray)
    if deploy:
        deploy_annotators(cfg.app_config(), cfg.ray.serve_app_name, engine_cls)
    try:
        stream, pool_rows = plan_stream(cfg)
        pl = cfg.pipeline
        results = stream.map_batches(
            AnnotateStage,
            fn_constructor_kwargs={
                "app_name": cfg.ray.serve_app_name, "annotators": names, "parts_dir": str(out.parts),
                "done": ray.put(done), "max_retries": pl.max_retries, "retry_backoff_s": pl.retry_backoff_s,
                "request_timeout_s": pl.request_timeout_s},
            batch_size=pl.batch_size, batch_format="pyarrow", num_cpus=pl.stage_num_cpus,
            compute=ray.data.ActorPoolStrategy(size=pl.concurrency))
        written = dict.fromkeys(names, 0)
        for stats in results.iter_batches(batch_format="pyarrow", batch_size=None):
            for a, r in zip(stats.column("annotator").to_pylist(), stats.column("rows").to_pylist()):
                written[a] = written.get(a, 0) + int(r)
            if progress is not None:
                progress(dict(written), pool_rows)
    finally:
        if deploy and not cfg.ray.keep_serve_running:
            undeploy_annotators(cfg.ray.serve_app_name)
    wall = time.monotonic() - t0
    n_rows, err_kinds, warn_kinds, per = summarise_table(str(out.root))
    this_run = sum(written.values())
    summary = LabelSummary(output=str(out.root), pool_rows=pool_rows, table_rows=n_rows,
                           rows_written_this_run=this_run, wall_time_s=round(wall, 3),
                           rows_per_s=round(this_run / wall, 2) if wall > 0 else 0.0,
                           errors_by_kind=err_kinds, warnings_by_kind=warn_kinds, annotators=per)
    (out.root / SUMMARY).write_text(json.dumps(summary.to_dict(), indent=2))
    return summary


def summary_lines(s: LabelSummary) -> list[str]:
    """A short human-readable closing summary."""
    lines = [f"annotation table: {s.output}",
             f"pool rows: {s.pool_rows}; table rows: {s.table_rows}; written this run: "
             f"{s.rows_written_this_run} in {s.wall_time_s:.1f}s ({s.rows_per_s:.1f} rows/s)"]
    lines.append("errors by kind: " + (", ".join(f"{k}={v}" for k, v in sorted(s.errors_by_kind.items()))
                                         or "none"))
    if s.warnings_by_kind:
        lines.append("warnings by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(s.warnings_by_kind.items())))
    for name, a in s.annotators.items():
        lines.append(f"  {name:<16} rows={a.rows:<8} errors={a.errors:<6} "
                     f"invalid votes={100 * a.invalid_vote_rate:.2f}%")
    return lines


