"""`molal-ray predict`: every text of a pool through a loop's exported classifier, and (with an
escalation) the doubtful ones through the LLM annotators.

Flow, the label job's: the pool is prepared once into ``PRED/pool`` (``pool_store``) -> Ray Data
streams its rows to predictor actors (:class:`~molal_ray.inference.stage.PredictStage`: one model
load each, a GPU each when asked) that write the predictions table in parts, skipping the rows it
already holds -> the parts are compacted per bucket -> the summary is counted batch by batch.
Nothing pool-sized reaches the driver. A rerun resumes; a kill loses no written row and writes
none twice (``pipeline/output.py``). The escalation is ``inference/escalate.py``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from molal_ray import schema
from molal_ray.config.predict import PredictJobConfig
from molal_ray.exceptions import ConfigError
from molal_ray.layout import PredictLayout
from molal_ray.lock import OutputLock
from molal_ray.pipeline.output import DoneIndex, OutputDir, compact, open_output, pin_buckets, table_files
from molal_ray.pipeline.pool_store import PreparedPool
from molal_ray.schema import PREDICTIONS
from molal_ray.storage import Location, resolve

logger = logging.getLogger("molal_ray.predict")

ProgressFn = Callable[[dict[str, int], int], None]
"""Called with the rows written so far this run (``{"classifier": n}``, as the label job's
progress) and the pool's rows."""

CONFIDENCE_MARKS = (0.5, 0.7, 0.9)  # the summary counts the classifier's rows below each


@dataclass
class PredictSummary:
    output: str
    model: str
    pool_rows: int
    table_rows: int
    rows_written_this_run: int
    wall_time_s: float
    rows_per_s: float
    by_source: dict[str, int] = field(default_factory=dict)  # rows per source ('flagged': no label)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    classifier_below: dict[str, int] = field(default_factory=dict)  # classifier rows under each confidence mark
    known: str | None = None  # the loop's labels.parquet used
    escalation: dict[str, Any] | None = None  # what ``inference/escalate.py`` did

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- before Ray -----------------------------------------------------------------------------------
def default_known(model: str) -> str | None:
    """The loop's ``labels.parquet`` beside its ``OUT/model`` folder, when there is one."""
    f = resolve(model).parent.join("labels.parquet")
    return str(f) if f.is_file() else None


def read_known(path: str, labels: list[str]) -> pa.Table:
    """A loop's ``labels.parquet`` (``sample_id, label, source, confidence``), checked against the
    model's labels."""
    loc = resolve(path, field="--known")
    if not loc.is_file():
        raise ConfigError(f"--known: {path} is not a file; expected a loop's labels.parquet")
    try:
        t = loc.read_parquet()
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"--known: cannot read {path} as Parquet ({str(exc).splitlines()[0]})") from None
    need = [schema.SAMPLE_ID, schema.LABEL, schema.SOURCE]
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise ConfigError(f"--known: {path} lacks columns {missing}; expected a loop's labels.parquet")
    if schema.CONFIDENCE not in t.column_names:
        t = t.append_column(schema.CONFIDENCE, pa.nulls(t.num_rows, pa.float32()))
    t = t.select([*need, schema.CONFIDENCE]).cast(
        pa.schema([(c, pa.string()) for c in need] + [(schema.CONFIDENCE, pa.float32())])
    )
    unknown = sorted(set(pc.unique(t.column(schema.LABEL)).to_pylist()) - set(labels))
    if unknown:
        raise ConfigError(
            f"--known: {path} has labels {unknown[:5]} the model does not have ({labels}); a loop of another task?"
        )
    return t


def check_job(cfg: PredictJobConfig) -> dict[str, Any]:
    """Every problem that can be known before Ray starts, as one ConfigError; the model's card."""
    from molal_ray.preflight import nesting_problems, pool_problems
    from molal_ray.products.model import describe_model
    from molal_ray.storage import write_problem

    card = describe_model(cfg.model)
    problems = pool_problems(cfg.pool, field="--pool") + nesting_problems(cfg.pool.path, cfg.output.path)
    problem = write_problem(cfg.output.path, folder=True)
    if problem:
        problems.append(f"--out: {problem}")
    if cfg.known:
        try:
            read_known(cfg.known, card["labels"])
        except ConfigError as exc:
            problems.append(str(exc))
    if cfg.escalation is not None:
        from molal_ray.inference.escalate import escalation_problems

        problems += escalation_problems(cfg, card["labels"])
    if problems:
        raise ConfigError("; ".join(problems))
    return card


PREDICT_GROUPS_PER_BLOCK = 4  # row groups (4,096 rows each) per predictor block


# -- the job --------------------------------------------------------------------------------------
def run_predict_job(
    cfg: PredictJobConfig, *, progress: ProgressFn | None = None, engine_cls: Any = None
) -> PredictSummary:
    """Predict every row of the pool (resuming what the output holds), then escalate if asked."""
    if cfg.known == "auto":
        cfg = cfg.model_copy(update={"known": default_known(cfg.model)})
    card = check_job(cfg)
    with OutputLock(cfg.output.path, "predict"):
        return _predict(cfg, card, progress, engine_cls)


def open_predictions(cfg: PredictJobConfig, card: dict[str, Any]) -> OutputDir:
    """The output folder for the predictions of ``card``'s model; one of another model is refused."""
    out = open_output(cfg.output.path, cfg.output.mode, card["labels"], [], PREDICTIONS, field="--out")
    data = out.manifest.read_json()
    if data.get("model") not in (None, card["fingerprint"]):
        raise ConfigError(
            f"--out: {out.root} holds the predictions of another model (or one changed since); use another "
            "folder or --overwrite"
        )
    data["model"] = card["fingerprint"]
    out.manifest.write_json(data)
    return out


def _predict(
    cfg: PredictJobConfig, card: dict[str, Any], progress: ProgressFn | None, engine_cls: Any
) -> PredictSummary:
    import ray.data

    from molal_ray.inference.stage import PredictStage
    from molal_ray.pipeline.annotate_stage import INPUT_COLUMNS
    from molal_ray.runtime import check_paths_reach_every_node, ensure_ray

    t0 = time.monotonic()
    labels = card["labels"]
    ensure_ray(cfg.ray)
    check_paths_reach_every_node(
        [("--out", cfg.output.path, cfg.output.shared), ("--pool", cfg.pool.path, cfg.pool.shared)]
    )
    out = open_predictions(cfg, card)
    pool = PreparedPool.build(cfg.pool, out.pool, buckets=out.buckets)
    if out.buckets is None:
        out = pin_buckets(out, pool.manifest.buckets)
    known = read_known(cfg.known, labels) if cfg.known else None
    p = cfg.predictor
    written = 0
    if pool.n_rows:
        first_run = not table_files(out.parts)[0]
        # Blocks of several row groups: the stage sorts a block's texts by length before batching
        # them, and a longer list pads less (a plain loop sorts the whole pool). The reads ask what
        # the predictors ask, so Ray Data runs them inside the predictor actors (no read tasks
        # competing with the classifier for CPUs, no block passed between processes).
        stream = pool.dataset(
            ("bucket", "flagged"),
            columns=INPUT_COLUMNS,
            groups_per_read=PREDICT_GROUPS_PER_BLOCK,
            num_cpus=p.num_cpus,
            num_gpus=p.num_gpus,
        ).map_batches(
            PredictStage,
            fn_constructor_kwargs={
                "model": cfg.model,
                "labels": labels,
                "parts_dir": out.parts,
                "done": DoneIndex(out.parts, empty=first_run, kind=PREDICTIONS),
                "known": known,
                "device": "cuda" if p.num_gpus > 0 else "cpu",
                "threads": p.threads,
                "batch_size": p.batch_size,
            },
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=p.num_cpus,
            num_gpus=p.num_gpus,
            compute=ray.data.ActorPoolStrategy(size=p.concurrency),
        )
        for stats in stream.iter_batches(batch_format="pyarrow", batch_size=None):
            written += int(pc.sum(stats.column("rows")).as_py() or 0)
            if progress is not None:
                progress({"classifier": written}, pool.n_rows)
    compact(out, pool.manifest.buckets, 0.25)
    wall = time.monotonic() - t0
    table_rows, by_source, errors, below = summarise_predictions(out.root)
    summary = PredictSummary(
        output=str(out.root),
        model=cfg.model,
        pool_rows=pool.n_rows,
        table_rows=table_rows,
        rows_written_this_run=written,
        wall_time_s=round(wall, 3),
        rows_per_s=round(written / wall, 2) if wall > 0 else 0.0,
        by_source=by_source,
        errors_by_kind=errors,
        classifier_below=below,
        known=cfg.known,
    )
    if table_rows != pool.n_rows:  # every row once: anything else is a bug, said loudly
        raise RuntimeError(f"predict: the table in {out.root} holds {table_rows} rows; the pool has {pool.n_rows}")
    if cfg.escalation is not None:
        from molal_ray.inference.escalate import escalate

        summary.escalation = escalate(cfg, out, pool, known, engine_cls)
    out.summary.write_json(summary.to_dict())
    return summary


def summarise_predictions(path: str | Location) -> tuple[int, dict[str, int], dict[str, int], dict[str, int]]:
    """Rows, rows per source, errors by kind and classifier rows under each confidence mark of a
    predictions table, batch by batch (memory stays flat)."""
    from molal_ray.pipeline.output import _dataset

    rows, by_source, errors = 0, Counter[str](), Counter[str]()
    below = dict.fromkeys(CONFIDENCE_MARKS, 0)
    data = _dataset(resolve(path), PREDICTIONS)
    for batch in data.to_batches(columns=[schema.SOURCE, schema.CONFIDENCE, schema.ERROR]):
        rows += batch.num_rows
        src = pc.fill_null(batch.column(0), "flagged")
        vc = pc.value_counts(src)
        by_source.update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
        err = pc.drop_null(batch.column(2))
        if len(err):
            kinds = pc.value_counts(
                pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(err, ":", max_splits=1), 0))
            )
            errors.update(dict(zip(kinds.field("values").to_pylist(), kinds.field("counts").to_pylist())))
        conf = batch.column(1).filter(pc.equal(src, schema.SOURCE_CLASSIFIER)).to_numpy(zero_copy_only=False)
        for mark in CONFIDENCE_MARKS:
            below[mark] += int(np.sum(conf < mark))
    return rows, dict(sorted(by_source.items())), dict(errors), {str(k): v for k, v in below.items()}


def read_predictions(path: str | Location, columns: list[str] | None = None) -> pa.Table:
    """The labels of a `molal-ray predict` output: the final table (``labels/``) when it was
    escalated, else the predictions table; one row per pool row."""
    from molal_ray.pipeline.output import read_table

    layout = PredictLayout(resolve(path, field="predictions"))
    if not layout.manifest.exists():
        raise ConfigError(f"predictions: {path} holds no predictions (no {layout.MANIFEST}); expected a predict output")
    final = layout.labels
    target = final.root if final.manifest.exists() else layout.root
    return read_table(target, PREDICTIONS, columns=columns)


def summary_lines(s: PredictSummary) -> list[str]:
    lines = [
        f"predictions: {s.output} ({s.table_rows} rows; {s.rows_written_this_run} written this run in "
        f"{s.wall_time_s:.1f}s, {s.rows_per_s:.1f} rows/s)",
        "by source: " + ", ".join(f"{k}={v}" for k, v in s.by_source.items()),
        "classifier rows with confidence below " + ", ".join(f"{k}: {v}" for k, v in s.classifier_below.items()),
    ]
    if s.known:
        lines.append(f"known labels: {s.known}")
    if s.errors_by_kind:
        lines.append("errors by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(s.errors_by_kind.items())))
    e = s.escalation
    if e:
        lines += [
            f"escalated: {e['escalated']} rows ({e['rule']}) to {', '.join(e['annotators'])}; "
            f"aggregator {e['aggregator']} fitted on {e['people_rows']} people-labelled rows"
            + (f" ({e['answers_from_loop']} of their answers the loop's)" if e.get("answers_from_loop") else ""),
            f"LLM calls: {e['llm_calls']} ({e['llm_calls_share']:.1%} of {e['llm_calls_everything']}, "
            "every usable text through every annotator)",
            f"final labels: {e['labels']} (" + ", ".join(f"{k}={v}" for k, v in e["by_source"].items()) + ")",
        ]
        p = e.get("people")
        if p:
            lines.append(
                f"people: {p['asked']} rows asked, {p['labelled']} labelled, {p['skipped']} skipped, {p['pending']} "
                f"pending in {p['where']}"
                + (f" ({p['note']})" if p["note"] else "")
                + ("; once they are labelled, run the same command again to take their labels" if p["pending"] else "")
            )
    return lines
