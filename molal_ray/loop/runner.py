"""`molal-ray run`: the MoLLIA loop on Ray.

Per round: the coordinator actor picks the queries (strategy over Ray Data batch inference of
the current classifier on a sub-sample of the pool), the annotator deployments label them (the
label pipeline, exactly once, into the loop's annotation table), the aggregator turns that into
labels, weights and negatives, Ray Train fits the classifier with the robust loss, and the test
split is scored. The state is saved after every finished round; ``resume`` starts at the next.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from molal_ray.aggregation.api import load_gold
from molal_ray.config.loop import LoopJobConfig
from molal_ray.exceptions import ConfigError, SchemaError
from molal_ray.loop.coordinator import coordinator_actor
from molal_ray.loop.inference import pool_view, predict_frame
from molal_ray.loop.report import write_report
from molal_ray.loop.state import LabeledRow, LoopState
from molal_ray.training.losses import lambda_for_round
from molal_ray.training.ray_trainer import rows_frame, train_classifier

logger = logging.getLogger("molal_ray.loop")


def read_pool_frame(cfg: LoopJobConfig) -> pd.DataFrame:
    """id and text of the pool's usable rows, read with Ray Data (flagged rows are left out of the
    loop and counted in the log). The loop keeps these two columns in the driver."""
    from molal_ray import schema
    from molal_ray.pipeline.label_job import build_prepared

    df = build_prepared(cfg.pool, cfg.pipeline.stage_num_cpus).to_pandas()
    bad = df[schema.POOL_ERROR].notna()
    if bad.any():
        logger.warning("%d pool rows are flagged (%s...) and left out of the loop", int(bad.sum()),
                       df.loc[bad, schema.POOL_ERROR].iloc[0])
    df = df.loc[~bad, [schema.SAMPLE_ID, schema.TEXT]].rename(columns={schema.SAMPLE_ID: "id"})
    return df.drop_duplicates("id").reset_index(drop=True)


def _split(cfg: LoopJobConfig, pool: pd.DataFrame, gold: dict[str, int]) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng([cfg.loop.seed, 7])
    with_gold = np.array([i for i in pool["id"] if i in gold], dtype=object)
    n_test = int(round(len(with_gold) * cfg.loop.test_fraction))
    if cfg.loop.test_max:
        n_test = min(n_test, cfg.loop.test_max)
    test = set(rng.choice(with_gold, n_test, replace=False).tolist()) if n_test else set()
    return sorted(test), [i for i in pool["id"] if i not in test]


def _evaluate(pred: pd.DataFrame, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    p = np.stack(pred["probs"].to_numpy()).argmax(1)
    return {"test_accuracy": float(accuracy_score(y, p)),
            "test_micro_f1": float(f1_score(y, p, average="micro")),
            "test_macro_f1": float(f1_score(y, p, average="macro"))}


def run_loop(cfg: LoopJobConfig, *, resume: bool = False,
             on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    import ray

    from molal_ray.pipeline.label_job import run_label_job
    from molal_ray.pipeline.output import read_annotation_table
    from molal_ray.runtime import ensure_ray, undeploy_annotators

    t0 = time.monotonic()
    L = cfg.loop
    out = Path(cfg.output.path)
    state_dir, ann_dir = out / "state", out / "annotations"
    labels = cfg.task.labels
    ensure_ray(cfg.ray)
    gold_df = load_gold(cfg.gold, labels)
    gold = dict(zip(gold_df["sample_id"], gold_df["y"].astype(int)))
    pool = read_pool_frame(cfg)
    text = dict(zip(pool["id"], pool["text"]))
    test_ids, loop_ids = _split(cfg, pool, gold)
    if resume:
        state = LoopState.load(state_dir)
        if state.labels != labels:
            raise ConfigError(f"resume: the saved loop has labels {state.labels}; the config has {labels}")
    else:
        if (state_dir / "state.json").exists():
            if cfg.output.mode != "overwrite":
                raise ConfigError(f"output.path: {out} holds a loop already; use --resume or output.mode: overwrite")
            import shutil

            shutil.rmtree(out)  # a new loop must not inherit the old one's annotations
        state = LoopState(labels=labels, pool_ids=list(loop_ids), seed=L.seed)
    coord = coordinator_actor().remote(state, str(state_dir), L.strategy, L.subsample, L.annotation,
                                       L.aggregator, L.discrepancy_alpha, L.negative_threshold)
    test_y = np.array([gold[i] for i in test_ids])
    test_df = pd.DataFrame({"id": test_ids, "text": [text[i] for i in test_ids]})
    copies = L.noise_copies if L.strategy in ("noise-stability", "bemps") else 0
    annotate = L.annotation != "gold"
    try:
        while state.round <= L.rounds:
            r = state.round
            info: dict[str, Any] = {"annotation_accuracy": None}
            if r == 0:
                rng = np.random.default_rng([L.seed, 0])
                candidates = [i for i in state.pool_ids if i in gold]
                if len(candidates) < L.initial_gold:
                    raise SchemaError(f"initial gold: {len(candidates)} pool rows have gold labels; "
                                      f"{L.initial_gold} requested")
                init = rng.choice(np.asarray(candidates, dtype=object), L.initial_gold, replace=False).tolist()
                state = ray.get(coord.add_rows.remote([LabeledRow(i, gold[i], "gold") for i in init]))
                if annotate:
                    _annotate(cfg, init, text, ann_dir, run_label_job)
            else:
                model_dir = state.history[-1]["model_dir"]
                cand = ray.get(coord.candidates.remote())
                cand_df = pd.DataFrame({"id": cand, "text": [text[i] for i in cand]})
                pred = predict_frame(cand_df, model_dir, cfg.classifier.max_length, copies, L.noise_scale, L.seed)
                lab_emb = None
                if L.strategy == "coreset":
                    lab = [x.sample_id for x in state.labeled]
                    lp = predict_frame(pd.DataFrame({"id": lab, "text": [text[i] for i in lab]}), model_dir,
                                       cfg.classifier.max_length)
                    lab_emb = np.stack(lp["embeddings"].to_numpy())
                queried = ray.get(coord.select.remote(pool_view(pred, copies, lab_emb), L.query_size))
                prev = dict(zip(pred["id"], np.stack(pred["probs"].to_numpy()).argmax(1).tolist()))
                table = None
                if annotate:
                    _annotate(cfg, queried, text, ann_dir, run_label_job)
                    table = read_annotation_table(ann_dir)
                info = ray.get(coord.assign.remote(queried, table, gold, {q: prev[q] for q in queried}))
                state = ray.get(coord.get_state.remote())
            rows = state.labeled
            rng = np.random.default_rng([L.seed, r, 3])
            order = rng.permutation(len(rows))
            n_val = max(1, int(round(len(rows) * L.val_fraction)))
            C = len(labels)
            neg = np.zeros((len(rows), C), np.float32)
            for i, x in enumerate(rows):
                neg[i, x.negatives] = 1.0
            frame = rows_frame([text[x.sample_id] for x in rows], np.array([x.label for x in rows]),
                               np.array([x.weight for x in rows]), neg)
            val, train = frame.iloc[order[:n_val]], frame.iloc[order[n_val:]]
            lam = lambda_for_round(r, L.lambda_start, L.lambda_step)
            res = train_classifier(train, val, C, cfg.classifier, lam, str(out / "train"), f"round-{r}")
            metrics = {"round": r, "n_labeled": len(rows), **_evaluate(predict_frame(test_df, res.model_dir,
                                                                                     cfg.classifier.max_length),
                                                                        test_y),
                       "annotation_accuracy": info.get("annotation_accuracy"), "val_accuracy": res.val_accuracy,
                       "lambda": lam, "model_dir": res.model_dir, "elapsed_s": round(time.monotonic() - t0, 1)}
            state = ray.get(coord.finish_round.remote(metrics))
            logger.info("round %d: %s", r, {k: metrics[k] for k in ("n_labeled", "test_accuracy", "test_macro_f1")})
            if on_round is not None:
                on_round(metrics)
    finally:
        if annotate and not cfg.ray.keep_serve_running:
            undeploy_annotators(cfg.ray.serve_app_name)
    return write_report(out, state.history, {"task": cfg.task.name, "strategy": L.strategy,
                                             "annotation": L.annotation, "query_size": L.query_size,
                                             "initial_gold": L.initial_gold, "test_rows": len(test_ids),
                                             "seed": L.seed})


def _annotate(cfg: LoopJobConfig, ids: list[str], text: dict[str, str], ann_dir: Path, run_label_job) -> None:  # type: ignore[no-untyped-def]
    """Annotate ``ids`` through the annotator deployments into the loop's table (exactly once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    qdir = ann_dir.parent / "queries"
    qdir.mkdir(parents=True, exist_ok=True)
    path = qdir / f"query-{len(list(qdir.glob('*.parquet'))):04d}.parquet"
    pq.write_table(pa.table({"id": ids, "text": [text[i] for i in ids]}), path)
    run_label_job(cfg.label_job(str(path), str(ann_dir)))
