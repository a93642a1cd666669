"""Student-first labelling: the rows the classifier is least sure of go to the LLM annotators.

After predicting (``inference/job.py``):

1. The doubtful rows are chosen from the predictions table: the classifier's rows (never a row
   the loop labelled) with the lowest confidence, ``budget`` of the pool's usable rows (ties
   broken by id hash, so a rerun chooses the same rows), or every one ``below`` a confidence.
2. They, and the pool rows people labelled in the loop (``gold``, ``human`` in its
   labels.parquet: what the aggregator is fitted on), go through the annotators of a label
   config: the label job itself (``run_label_job`` on the prepared pool's rows with those keys),
   into ``PRED/escalation/``: exactly once and resumable; a larger budget later asks only the
   rows not asked yet. The people-labelled rows' answers the loop already has (its
   ``OUT/annotations`` beside the labels.parquet) are copied in first, from each annotator
   whose settings are the label config's (the same fingerprint), and not asked again.
3. The aggregator is fitted on the people-labelled rows' answers and labels the doubtful rows
   (``PRED/escalation/mixture.parquet``, its output table). A row's label is then, by default
   (``combine: product``), the top of the product of the mixture's and the classifier's
   distributions, renormalised: the LLMs' answers and the classifier's reading of the text are
   two views of the row, and where the classifier is unsure its distribution still carries
   evidence (on TREC after the example loop, 20% escalated: the mixture alone 0.579 on those
   rows, the classifier 0.585, the product 0.620; ``benchmarks/student_first.py``).
   ``combine: mixture``: the mixture's label alone.
4. With ``people: N``, the N escalated rows least sure after step 3 go to people, as the loop's
   routing sends them (``review.backend``: ``files`` writes ``PRED/review/escalated.csv`` to fill
   in, ``label_studio`` pushes them to a running project and waits up to ``review.wait_s``). The
   command does not stop for them: their labels replace the mixture's (source ``human``) when
   they are there, on this run or when the same command runs again.
5. ``PRED/labels/`` is the predictions table with the doubtful rows relabelled (source
   ``mixture``, or ``human``), written again whole from the two (a Ray task per pool bucket).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from molal_ray import schema
from molal_ray.config import LabelJobConfig
from molal_ray.config.job import OutputConfig
from molal_ray.config.predict import EscalationConfig, PredictJobConfig
from molal_ray.exceptions import ConfigError
from molal_ray.ids import hash_ids
from molal_ray.layout import LabelLayout, LoopLayout, PredictLayout
from molal_ray.pipeline.output import (
    DoneIndex,
    OutputDir,
    check_table_settings,
    open_output,
    pin_buckets,
    read_annotation_rows,
    read_table,
    table_files,
    table_fingerprints,
    write_part,
)
from molal_ray.pipeline.pool_store import PreparedPool
from molal_ray.pipeline.prepare import ROW, bucket_of
from molal_ray.schema import PREDICTIONS
from molal_ray.serve.fingerprint import fingerprints
from molal_ray.storage import Location, resolve

logger = logging.getLogger("molal_ray.predict")

PEOPLE_SOURCES = ("gold", "human")  # labels people gave in the loop (``loop/state.py``'s HUMAN_SOURCES)
MIN_PEOPLE_ROWS = 10  # fewer people-labelled pool rows than this cannot fit an aggregator that learns


def escalation_problems(cfg: PredictJobConfig, labels: list[str]) -> list[str]:
    """What is wrong with an escalation before Ray starts (one line each)."""
    from molal_ray.aggregation.base import DEFAULT, available, registered

    e = cfg.escalation
    assert e is not None
    problems: list[str] = []
    try:
        lcfg = LabelJobConfig.from_file(e.label_config)
    except ConfigError as exc:
        return [f"--escalate: {exc}"]
    if lcfg.task.labels != labels:
        same = sorted(lcfg.task.labels) == sorted(labels)
        problems.append(
            f"--escalate: {e.label_config} labels {lcfg.task.labels}; the model was trained for {labels}"
            + (" (the same labels in another order: the config's order must be the model's)" if same else "")
        )
    if cfg.output.mode == "resume":  # the escalation's table, if any, holds the same annotators
        try:
            check_table_settings(
                PredictLayout(resolve(cfg.output.path, field="--out")).escalation.root,
                fingerprints(lcfg.annotators, lcfg.task),
                field="--escalate",
            )
        except ConfigError as exc:
            problems.append(str(exc))
    name = DEFAULT if e.aggregator == "default" else e.aggregator
    if name not in available():
        problems.append(f"--aggregator: got {e.aggregator!r}; expected one of {['default', *available()]}")
    elif registered(name).uses_gold and not cfg.known:
        problems.append(
            f"--escalate: the aggregator {e.aggregator} is fitted on the loop's gold and people's labels: give "
            "--known (the loop's labels.parquet), or --aggregator majority"
        )
    return problems


def label_config(cfg: PredictJobConfig, layout: PredictLayout) -> LabelJobConfig:
    """The escalation's label job: the label config's task, annotators, pipeline and Serve
    application, on the predict job's pool, into ``PRED/escalation`` (resumed)."""
    e = cfg.escalation
    assert e is not None
    lcfg = LabelJobConfig.from_file(e.label_config)
    ray_cfg = lcfg.ray.model_copy(update={"address": cfg.ray.address or lcfg.ray.address})
    return lcfg.model_copy(
        update={
            "pool": cfg.pool,
            "output": OutputConfig(path=str(layout.escalation.root), mode="resume", shared=cfg.output.shared),
            "ray": ray_cfg,
        }
    )


def choose(conf: np.ndarray, ids: np.ndarray, e: EscalationConfig, usable: int) -> np.ndarray:
    """Positions of the rows to escalate among the classifier's rows (``conf``, ``ids``): the
    ``budget`` share of the ``usable`` pool rows with the lowest confidence (ties by id hash), or
    every row ``below`` a confidence."""
    if e.below is not None:
        return np.flatnonzero(conf < e.below)
    assert e.budget is not None
    k = min(int(round(e.budget * usable)), len(conf))
    order = np.lexsort((hash_ids(ids.tolist()) if len(ids) else np.zeros(0, np.uint64), conf))
    return np.sort(order[:k])


def people_rows(known: pa.Table | None, labels: list[str]) -> pd.DataFrame:
    """The loop's people-given labels as a gold frame (``sample_id, y``)."""
    if known is None:
        return pd.DataFrame({"sample_id": pd.Series(dtype=object), "y": pd.Series(dtype=np.int64)})
    t = known.filter(pc.is_in(known.column(schema.SOURCE), value_set=pa.array(PEOPLE_SOURCES)))
    index = {name: i for i, name in enumerate(labels)}
    return pd.DataFrame(
        {
            "sample_id": t.column(schema.SAMPLE_ID).to_pylist(),
            "y": [index[x] for x in t.column(schema.LABEL).to_pylist()],
        }
    ).drop_duplicates("sample_id")


def loop_answers(known_path: str | None) -> LabelLayout | None:
    """The annotation table of the loop whose ``labels.parquet`` is ``known_path`` (``OUT/annotations``
    beside it), when there is one."""
    if not known_path:
        return None
    table = LoopLayout(resolve(known_path).parent).annotations
    return table if table.holds_table() else None


def reuse_loop_answers(
    lcfg: LabelJobConfig, escalation: OutputDir, loop: LabelLayout | None, ids: list[str], buckets: int
) -> int:
    """The loop's answers to ``ids`` (the people-labelled rows the aggregator is fitted on) copied
    into the escalation's table, from each annotator whose fingerprint (task and engine settings)
    is the same in the loop's table as in the label config, so that the label job does not ask
    them again; error rows are left to be asked. Pairs the escalation's table already holds are
    not copied twice. Returns the pairs of ``ids`` the loop's answers cover (copied now or on an
    earlier run), which were not LLM calls of the escalation."""
    if loop is None or not ids:
        return 0
    kept = table_fingerprints(loop.root)
    names = [n for n, fp in fingerprints(lcfg.annotators, lcfg.task).items() if kept.get(n) == fp]
    if not names:
        return 0
    rows = read_annotation_rows(loop.root, ids)
    ours = pc.is_in(rows.column(schema.ANNOTATOR), value_set=pa.array(names))
    rows = rows.filter(pc.and_(ours, pc.is_null(rows.column(schema.ERROR))))
    if not rows.num_rows:
        return 0
    rows = rows.select(list(schema.ANNOTATION_SCHEMA.names)).cast(schema.ANNOTATION_SCHEMA)
    h = hash_ids(rows.column(schema.SAMPLE_ID).to_pylist())
    of = bucket_of(h, buckets)
    done = DoneIndex(escalation.parts)
    annotators = np.asarray(rows.column(schema.ANNOTATOR).to_pylist(), dtype=object)
    for k in np.unique(of):
        new = np.zeros(rows.num_rows, dtype=bool)
        for name in names:
            at = (of == k) & (annotators == name)
            new[at] = ~done.mask(name, h[at], int(k))
        if new.any():
            write_part(escalation.parts, rows.filter(pa.array(new)), bucket=int(k))
    return rows.num_rows


def escalate(
    cfg: PredictJobConfig, out: OutputDir, pool: PreparedPool, known: pa.Table | None, engine_cls: Any = None
) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; what was done, for the summary."""
    from molal_ray.aggregation.api import aggregate
    from molal_ray.aggregation.base import DEFAULT, registered
    from molal_ray.pipeline.label_job import run_label_job

    e = cfg.escalation
    assert e is not None
    labels = out.manifest.read_json()["labels"]
    layout = PredictLayout(out.root)
    lcfg = label_config(cfg, layout)
    names = [a.name for a in lcfg.annotators]

    # 1. the doubtful rows
    t = read_table(
        out.root,
        PREDICTIONS,
        columns=[schema.SAMPLE_ID, schema.CONFIDENCE],
        filter=pc.field(schema.SOURCE) == schema.SOURCE_CLASSIFIER,
    )
    ids = t.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False)
    picked = choose(t.column(schema.CONFIDENCE).to_numpy(zero_copy_only=False), ids, e, pool.n_usable)
    doubtful = ids[picked].tolist()
    rule = (
        f"budget {e.budget:g} of {pool.n_usable} usable rows"
        if e.budget is not None
        else f"confidence below {e.below:g}"
    )
    # 2. they and the people-labelled rows through the annotators
    gold_df = people_rows(known, labels)
    fit = pool.find(gold_df["sample_id"].tolist())
    gold_df = gold_df[gold_df["sample_id"].isin(set(fit.column(schema.SAMPLE_ID).to_pylist()))]
    if registered(DEFAULT if e.aggregator == "default" else e.aggregator).uses_gold and len(gold_df) < MIN_PEOPLE_ROWS:
        raise ConfigError(
            f"--escalate: {len(gold_df)} of the known people-labelled rows are pool rows; the aggregator "
            f"{e.aggregator} needs at least {MIN_PEOPLE_ROWS} (is --pool the loop's pool?), or --aggregator majority"
        )
    found = pool.find(doubtful)
    keys = np.unique(np.concatenate([found.column(ROW).to_numpy(), fit.column(ROW).to_numpy()]).astype(np.int64))
    escalation = pin_buckets(
        open_output(
            lcfg.output.path,
            lcfg.output.mode,
            labels,
            names,
            fingerprints=fingerprints(lcfg.annotators, lcfg.task),
            field="--out",
        ),
        pool.manifest.buckets,
    )
    reused = reuse_loop_answers(
        lcfg, escalation, loop_answers(cfg.known), gold_df["sample_id"].tolist(), pool.manifest.buckets
    )
    logger.info(
        "escalating %d rows (%s) and %d people-labelled rows (%d of their answers from the loop)",
        len(doubtful),
        rule,
        len(gold_df),
        reused,
    )
    label_summary = run_label_job(lcfg, engine_cls=engine_cls, pool=pool, keys=keys)
    # 3. the aggregator, fitted on the people's rows, labels the doubtful ones
    asked = doubtful + gold_df["sample_id"].tolist()
    table = read_annotation_rows(lcfg.output.path, asked)
    result = aggregate(
        table, gold_df, labels, e.aggregator, seed=0, validate=len(gold_df) >= MIN_PEOPLE_ROWS, baselines=False
    )
    mixture = result.table.filter(pc.is_in(result.table.column("sample_id"), value_set=pa.array(doubtful, pa.string())))
    layout.mixture.write_parquet(mixture)
    finals = final_labels(out, mixture, labels, e.combine)
    # 4. people for the least sure
    people = None
    if e.people:
        finals, people = ask_people(e, layout, pool, finals, table, labels)
    # 5. the final table
    final = write_final(out, pool, finals)
    from molal_ray.inference.job import summarise_predictions

    _rows, by_source, _errors, _below = summarise_predictions(final.root)
    calls = label_summary.table_rows - reused
    everything = pool.n_usable * len(names)
    validation = result.report.get("validation", {}).get(result.report["method"])
    return {
        "rule": rule,
        "escalated": len(doubtful),
        "people_rows": len(gold_df),
        "annotators": names,
        "aggregator": result.report["method"],
        "combine": e.combine,
        "aggregator_cv_accuracy": validation["accuracy"] if validation else None,
        "llm_calls": calls,
        "answers_from_loop": reused,
        "llm_calls_everything": everything,
        "llm_calls_share": round(calls / everything, 4) if everything else 0.0,
        "escalation": str(layout.escalation.root),
        "mixture": str(layout.mixture),
        "labels": str(final.root),
        "by_source": by_source,
        "people": people,
    }


def final_labels(out: OutputDir, mixture: pa.Table, labels: list[str], combine: str) -> pa.Table:
    """``sample_id, label, confidence`` of the escalated rows: the mixture's, or (``product``) of
    the product of the mixture's and the classifier's distributions, renormalised."""
    ids = mixture.column("sample_id")
    pm = np.asarray(mixture.column("probs").to_pylist(), dtype=np.float64).reshape(len(ids), len(labels))
    if combine == "product" and len(ids):
        t = read_table(
            out.root,
            PREDICTIONS,
            columns=[schema.SAMPLE_ID, schema.PROBS],
            filter=pc.is_in(pc.field(schema.SAMPLE_ID), value_set=ids.combine_chunks()),
        )
        at = {sid: i for i, sid in enumerate(t.column(schema.SAMPLE_ID).to_pylist())}
        pc_ = np.asarray(t.column(schema.PROBS).to_pylist(), dtype=np.float64).reshape(t.num_rows, len(labels))
        pm = pm * pc_[[at[sid] for sid in ids.to_pylist()]]
        pm /= np.maximum(pm.sum(1, keepdims=True), 1e-300)
    lab = np.asarray(labels, dtype=object)
    return pa.table(
        {
            "sample_id": ids,
            "label": pa.array(lab[pm.argmax(1)].tolist() if len(ids) else [], pa.string()),
            "confidence": pa.array(pm.max(1).astype(np.float32) if len(ids) else np.zeros(0, np.float32)),
            "source": pa.array([schema.SOURCE_MIXTURE] * len(ids), pa.string()),
        }
    )


PEOPLE_BATCH = "escalated"  # the review batch's name (PRED/review/escalated.csv; Label Studio's data.batch)


def ask_people(
    e: EscalationConfig,
    layout: PredictLayout,
    pool: PreparedPool,
    finals: pa.Table,
    table: pa.Table,
    labels: list[str],
) -> tuple[pa.Table, dict[str, Any]]:
    """Step 4: the ``e.people`` least sure of ``finals`` (the escalated rows' labels) to review;
    ``finals`` with the labels people have given so far (source ``human``, confidence 1), and
    what was asked, given and is pending."""
    from molal_ray.exceptions import ReviewServerError
    from molal_ray.review.backend import make_backend, wait_for_people
    from molal_ray.review.files import ReviewItem
    from molal_ray.review.selection import answers_by_sample

    conf = finals.column("confidence").to_numpy()
    ids_all = finals.column("sample_id").to_pylist()
    pick = np.lexsort((hash_ids(ids_all) if ids_all else np.zeros(0, np.uint64), conf))[: e.people]
    ids = [ids_all[i] for i in pick]
    backend = make_backend(e.review, layout.review, labels)
    where, note = str(backend.where), None
    try:
        got = backend.pull(PEOPLE_BATCH, ids)
        if not got.complete(ids):
            found = pool.find(ids)
            texts = dict(
                zip(
                    found.column(schema.SAMPLE_ID).to_pylist(),
                    pool.fetch(found.column(ROW).to_numpy(), columns=(schema.TEXT,)).column(schema.TEXT).to_pylist(),
                )
            )
            answers = answers_by_sample(table, labels, ids)
            suggested = finals.column("label").to_pylist()
            items = [
                ReviewItem(ids_all[j], texts[ids_all[j]], suggested[j], float(conf[j]), answers.get(ids_all[j], {}))
                for j in pick
            ]
            where = backend.push(PEOPLE_BATCH, items)
            if e.review.backend == "label_studio" and e.review.wait_s > 0:
                got = wait_for_people(backend, PEOPLE_BATCH, ids, poll_s=e.review.poll_s, wait_s=e.review.wait_s)
    except ReviewServerError as exc:
        got, note = None, f"the server could not be reached: {exc}"
    finally:
        backend.close()
    given = {i: lab for i, lab in (got.labels.items() if got else []) if i in set(ids)}
    skipped = set(got.skipped) & set(ids) if got else set()
    if given:
        label = finals.column("label").to_pylist()
        confidence = conf.astype(np.float32).copy()
        source = finals.column("source").to_pylist()
        for j, sid in enumerate(ids_all):
            if sid in given:
                label[j], confidence[j], source[j] = given[sid], 1.0, "human"
        finals = pa.table(
            {
                "sample_id": finals.column("sample_id"),
                "label": pa.array(label, pa.string()),
                "confidence": pa.array(confidence, pa.float32()),
                "source": pa.array(source, pa.string()),
            }
        )
    pending = len(ids) - len(given) - len(skipped)
    return finals, {
        "asked": len(ids),
        "labelled": len(given),
        "skipped": len(skipped),
        "pending": pending,
        "where": where,
        "note": note,
    }


def relabel_bucket(pred_parts: Location, bucket: int, mixture: pa.Table, labels_parts: Location) -> int:
    """One bucket of the final table: the bucket's predictions, the ``mixture``'s rows (the
    escalated rows of this bucket: ``sample_id, label, confidence, source``) relabelled; returns
    its rows."""
    import pyarrow.dataset as pads

    from molal_ray.pipeline.output import write_part

    files, _ = table_files(pred_parts, bucket)
    if not files:
        return 0
    t = pads.dataset(
        [f.path for f in files], format="parquet", filesystem=pred_parts.fs, schema=PREDICTIONS.schema
    ).to_table()
    if mixture.num_rows:
        ids = t.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False)
        pos = {sid: i for i, sid in enumerate(mixture.column("sample_id").to_pylist())}
        at = np.array([pos.get(sid, -1) for sid in ids], dtype=np.int64)
        hit = at >= 0
        label = np.asarray(t.column(schema.LABEL).to_pylist(), dtype=object)
        conf = t.column(schema.CONFIDENCE).to_numpy(zero_copy_only=False).astype(np.float32)
        source = np.asarray(t.column(schema.SOURCE).to_pylist(), dtype=object)
        label[hit] = np.asarray(mixture.column("label").to_pylist(), dtype=object)[at[hit]]
        conf[hit] = mixture.column("confidence").to_numpy()[at[hit]]
        source[hit] = np.asarray(mixture.column("source").to_pylist(), dtype=object)[at[hit]]
        t = t.set_column(t.schema.get_field_index(schema.LABEL), schema.LABEL, pa.array(label.tolist(), pa.string()))
        t = t.set_column(t.schema.get_field_index(schema.CONFIDENCE), schema.CONFIDENCE, pa.array(conf, pa.float32()))
        t = t.set_column(t.schema.get_field_index(schema.SOURCE), schema.SOURCE, pa.array(source.tolist(), pa.string()))
    write_part(labels_parts, t, bucket, PREDICTIONS)
    return t.num_rows


def write_final(out: OutputDir, pool: PreparedPool, mixture: pa.Table) -> OutputDir:
    """``PRED/labels/`` written again whole: the predictions with the mixture's rows relabelled."""
    import ray

    layout = PredictLayout(out.root)
    labels = out.manifest.read_json()["labels"]
    final = open_output(layout.labels.root, "overwrite", labels, [], PREDICTIONS, field="--out")
    final = pin_buckets(final, pool.manifest.buckets)
    buckets = pool.manifest.buckets
    of = bucket_of(hash_ids(mixture.column("sample_id").to_pylist()), buckets) if mixture.num_rows else np.zeros(0)
    small = mixture.select(["sample_id", "label", "confidence", "source"])  # the final labels of the escalated rows
    task = ray.remote(num_cpus=0.25)(relabel_bucket)
    refs = [task.remote(out.parts, k, small.filter(pa.array(of == k)), final.parts) for k in range(buckets)]
    rows = sum(ray.get(refs))
    if rows != pool.n_rows:
        raise RuntimeError(f"predict --escalate: the final table has {rows} rows; the pool has {pool.n_rows}")
    return final
