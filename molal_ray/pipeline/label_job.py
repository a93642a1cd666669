"""`molal-ray label`: stream the pool through every annotator into the annotation table.

Flow: the pool is read once and prepared (rows checked, repeated ids resolved in their id-hash
bucket; ``pool_store``) into ``OUT/pool`` -> Ray Data streams the prepared rows to an actor pool
that sends batches to the annotator deployments and writes parts, skipping pairs the table holds
(loaded per bucket) -> the driver sees only per-batch counts -> parts are compacted per bucket
-> the summary is computed batch by batch with Arrow compute. Nothing pool-sized reaches the
driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from molal_ray import schema
from molal_ray.aggregation.cascade import CascadePlan, everyone, needs_ranking, plan_for, rank
from molal_ray.config import LabelJobConfig
from molal_ray.engines.base import Engine
from molal_ray.exceptions import ConfigError
from molal_ray.lock import OutputLock
from molal_ray.pipeline.annotate_stage import INPUT_COLUMNS, AnnotateStage, stage_batch, stage_options
from molal_ray.pipeline.output import (
    DoneIndex,
    OutputDir,
    compact,
    open_output,
    pin_buckets,
    read_annotation_rows,
    table_files,
)
from molal_ray.pipeline.pool_store import PreparedPool
from molal_ray.pipeline.summary import LabelSummary, summarise_table
from molal_ray.preflight import check_files
from molal_ray.runtime import check_paths_reach_every_node, ensure_ray, long_blocks, start_annotators, stop_annotators
from molal_ray.serve.fingerprint import fingerprints

logger = logging.getLogger("molal_ray.label")

ProgressFn = Callable[[dict[str, int], int], None]
"""Called with the rows written so far per annotator (this run) and the rows expected per annotator."""


def plan_cascade(
    cfg: LabelJobConfig, pool: PreparedPool, out: OutputDir, written: dict[str, int]
) -> CascadePlan | None:
    """The stages of this run, kept in ``OUT/cascade.json`` (which ``molal-ray aggregate`` reads):
    as configured, or (``order: gold``) refilled by each annotator's accuracy on the rows of
    ``cascade.gold``, which every annotator labels first, into the table. A resumed run keeps the
    ranking it made. Without a cascade the file is removed: the table is no longer cascaded.
    The rows the ranking writes are added to ``written``."""
    target = out.cascade
    if cfg.cascade is None:
        target.delete_file()
        return None
    previous = target.read_json() if target.exists() else None
    if needs_ranking(cfg.cascade, previous):
        plan = rank_on_gold(cfg, pool, out, written)
    else:
        plan = plan_for(cfg.cascade, previous)
    target.write_json(plan.to_dict())
    return plan


def rank_on_gold(cfg: LabelJobConfig, pool: PreparedPool, out: OutputDir, written: dict[str, int]) -> CascadePlan:
    """Every annotator labels the pool rows of ``cascade.gold`` (into the table, exactly once like
    any row); the stages are refilled by accuracy there (``aggregation/cascade.py``)."""
    from molal_ray.aggregation import build_matrix
    from molal_ray.aggregation.api import load_gold
    from molal_ray.pipeline.prepare import ROW

    assert cfg.cascade is not None and cfg.cascade.gold
    labels = cfg.task.labels
    gold_df = load_gold(cfg.cascade.gold, labels)
    found = pool.find(gold_df["sample_id"].tolist())
    if not found.num_rows:
        raise ConfigError(
            f"cascade.gold: none of its {len(gold_df)} ids is a usable row of the pool; the annotators cannot be ranked"
        )
    keys = found.column(ROW).to_numpy()
    ids = found.column(schema.SAMPLE_ID).to_pylist()
    texts = pool.fetch(keys, columns=(schema.TEXT,)).column(schema.TEXT).to_pylist()
    stage = AnnotateStage(**stage_options(cfg, out.parts, DoneIndex(out.parts), everyone(cfg.cascade)))
    stats = stage(stage_batch(keys, ids, texts))
    for a, r in zip(stats.column("annotator").to_pylist(), stats.column("rows").to_pylist()):
        written[a] = written.get(a, 0) + int(r)
    m = build_matrix(read_annotation_rows(out.root, ids), len(labels), sample_ids=np.asarray(ids, dtype=object))
    y = gold_df.set_index("sample_id").loc[ids, "y"].to_numpy(dtype=np.int64)
    plan = rank(cfg.cascade, m, np.arange(len(ids)), y)
    logger.info("cascade stages by accuracy on %d gold rows: %s", len(ids), plan.stages)
    return plan


def annotate_dataset(
    pool: PreparedPool,
    out: OutputDir,
    cfg: LabelJobConfig,
    stages: list[list[str]] | None = None,
    keys: np.ndarray | None = None,
):
    """The lazy Ray Dataset of per-batch counts: every prepared row (usable and flagged), or the
    usable rows with ``keys``, through the annotate actors (in ``stages``; None: the configured ones)."""
    import ray.data

    pl = cfg.pipeline
    if not (pool.n_rows if keys is None else len(keys)):
        return None
    first_run = not table_files(out.parts)[0]
    stream = pool.dataset(("bucket", "flagged"), columns=INPUT_COLUMNS, keys=keys, num_cpus=pl.stage_num_cpus)
    stream = stream.map_batches(
        AnnotateStage,
        fn_constructor_kwargs=stage_options(
            cfg, out.parts, DoneIndex(out.parts, empty=first_run), stages or cfg.stages()
        ),
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=pl.stage_num_cpus,
        compute=ray.data.ActorPoolStrategy(size=pl.concurrency),
    )
    return long_blocks(stream)  # a block waits on every annotator: slow ones take hours


def run_label_job(
    cfg: LabelJobConfig,
    *,
    engine_cls: type[Engine] | None = None,
    progress: ProgressFn | None = None,
    deploy: bool = True,
    pool: PreparedPool | None = None,
    keys: np.ndarray | None = None,
) -> LabelSummary:
    """Label the pool; resumes from what the output folder already holds. The annotators are the
    application running under ``cfg.ray.serve_app_name`` when it matches the job, else deployed
    (and deleted at the end); ``deploy=False`` uses the running one without checking it.

    ``pool``: a pool already prepared (from ``cfg.pool``'s files) elsewhere, read instead of
    preparing ``OUT/pool``; ``keys``: only these usable rows of it (``molal-ray predict
    --escalate``: the classifier's doubtful rows)."""
    check_files(cfg)  # before Ray starts and any annotator is asked
    with OutputLock(cfg.output.path, "label"):  # one job at a time writes the folder
        return _label(cfg, engine_cls, progress, deploy, pool, keys)


def _label(
    cfg: LabelJobConfig,
    engine_cls: type[Engine] | None,
    progress: ProgressFn | None,
    deploy: bool,
    given: PreparedPool | None = None,
    keys: np.ndarray | None = None,
) -> LabelSummary:
    t0 = time.monotonic()
    labels = cfg.task.labels
    names = [a.name for a in cfg.annotators]
    ensure_ray(cfg.ray)
    check_paths_reach_every_node(
        [("output.path", cfg.output.path, cfg.output.shared), ("pool.path", cfg.pool.path, cfg.pool.shared)]
    )
    out = open_output(
        cfg.output.path, cfg.output.mode, labels, names, fingerprints=fingerprints(cfg.annotators, cfg.task)
    )
    if given is None:
        pool = PreparedPool.build(cfg.pool, out.pool, num_cpus=cfg.pipeline.stage_num_cpus, buckets=out.buckets)
    elif out.buckets not in (None, given.manifest.buckets):
        raise ConfigError(
            f"output.path: {out.root} holds a table written with {out.buckets} pool buckets; the pool has "
            f"{given.manifest.buckets}. Use another folder"
        )
    else:
        pool = given
    if out.buckets is None:
        out = pin_buckets(out, pool.manifest.buckets)
    if pool.n_flagged and keys is None:
        logger.warning(
            "%d of %d pool rows are flagged (%s); they get error rows",
            pool.n_flagged,
            pool.n_rows,
            ", ".join(f"{k}={v}" for k, v in sorted(pool.manifest.flagged_by_kind.items())),
        )
    ours = start_annotators(cfg.app_config(), cfg.ray.serve_app_name, engine_cls) if deploy else False
    written = dict.fromkeys(names, 0)
    t_annotate = time.monotonic()
    try:
        plan = plan_cascade(cfg, pool, out, written)
        results = annotate_dataset(pool, out, cfg, plan.stages if plan else None, keys)
        target = pool.n_rows if keys is None else len(keys)
        for stats in results.iter_batches(batch_format="pyarrow", batch_size=None) if results is not None else []:
            for a, r in zip(stats.column("annotator").to_pylist(), stats.column("rows").to_pylist()):
                written[a] = written.get(a, 0) + int(r)
            if progress is not None:
                progress(dict(written), target)
    finally:
        stop_annotators(cfg.ray.serve_app_name, ours, cfg.ray.keep_serve_running)
    wall = time.monotonic() - t0
    annotate_s = time.monotonic() - t_annotate
    compact(out, pool.manifest.buckets, cfg.pipeline.stage_num_cpus)
    n_rows, err_kinds, warn_kinds, per = summarise_table(out.root)
    this_run = sum(written.values())
    # Each flagged pool row has an error row per annotator (never settled, it reaches every stage);
    # every other row of the table is one LLM call. A job on some rows (``keys``) asks no flagged row.
    calls = n_rows - (pool.n_flagged * len(names) if keys is None else 0)
    asked = pool.n_usable if keys is None else len(keys)
    summary = LabelSummary(
        output=str(out.root),
        pool_rows=pool.n_rows if keys is None else len(keys),
        table_rows=n_rows,
        llm_calls_per_text=round(calls / asked, 4) if asked else 0.0,
        rows_written_this_run=this_run,
        wall_time_s=round(wall, 3),
        rows_per_s=round(this_run / wall, 2) if wall > 0 else 0.0,
        annotate_s=round(annotate_s, 3),
        errors_by_kind=err_kinds,
        warnings_by_kind=warn_kinds,
        annotators=per,
        cascade=plan.to_dict() if plan else None,
    )
    out.summary.write_json(summary.to_dict())
    return summary


def summary_lines(s: LabelSummary) -> list[str]:
    """A short human-readable closing summary."""
    lines = [
        f"annotation table: {s.output}",
        f"pool rows: {s.pool_rows}; table rows: {s.table_rows}; written this run: "
        f"{s.rows_written_this_run} in {s.wall_time_s:.1f}s ({s.rows_per_s:.1f} rows/s)",
        f"LLM calls per text: {s.llm_calls_per_text:.2f}",
    ]
    if s.cascade:
        lines.append(
            "cascade stages: "
            + " -> ".join("[" + ", ".join(st) + "]" for st in s.cascade["stages"])
            + (f" (by accuracy on {s.cascade['gold_rows']} gold rows)" if s.cascade["order"] == "gold" else "")
        )
    lines.append("errors by kind: " + (", ".join(f"{k}={v}" for k, v in sorted(s.errors_by_kind.items())) or "none"))
    if s.warnings_by_kind:
        lines.append("warnings by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(s.warnings_by_kind.items())))
    for name, a in s.annotators.items():
        lines.append(
            f"  {name:<16} rows={a.rows:<8} errors={a.errors:<6} invalid votes={100 * a.invalid_vote_rate:.2f}%"
        )
    return lines
