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
from molal_ray.loop.inference import NOISY, pool_view, predict_frame
from molal_ray.loop.pool_store import PoolStore
from molal_ray.loop.report import write_report
from molal_ray.loop.state import LabeledRow, LoopState
from molal_ray.training.losses import lambda_for_round
from molal_ray.training.local_trainer import train_local
from molal_ray.training.ray_trainer import rows_frame, train_classifier

logger = logging.getLogger("molal_ray.loop")


def _split(cfg: LoopJobConfig, pool_ids: np.ndarray, gold: dict[str, int]) -> tuple[list[str], list[str]]:
    """The test split (gold-labelled pool rows, drawn with the seed) and the loop's pool."""
    rng = np.random.default_rng([cfg.loop.seed, 7])
    with_gold = np.array([i for i in pool_ids if i in gold], dtype=object)
    n_test = int(round(len(with_gold) * cfg.loop.test_fraction))
    if cfg.loop.test_max:
        n_test = min(n_test, cfg.loop.test_max)
    test = set(rng.choice(with_gold, n_test, replace=False).tolist()) if n_test else set()
    return sorted(test), [i for i in pool_ids if i not in test]


def _evaluate(pred: pd.DataFrame, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    p = np.stack(pred["probs"].to_numpy()).argmax(1)
    return {"test_accuracy": float(accuracy_score(y, p)),
            "test_micro_f1": float(f1_score(y, p, average="micro")),
            "test_macro_f1": float(f1_score(y, p, average="macro"))}


def run_loop(cfg: LoopJobConfig, *, resume: bool = False,
             on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    import ray

    from molal_ray.pipeline.output import read_annotation_table
    from molal_ray.runtime import deploy_annotators, ensure_ray, undeploy_annotators

    t0 = time.monotonic()
    L = cfg.loop
    out = Path(cfg.output.path)
    state_dir, ann_dir = out / "state", out / "annotations"
    labels = cfg.task.labels
    ensure_ray(cfg.ray)
    gold_df = load_gold(cfg.gold, labels)
    gold = dict(zip(gold_df["sample_id"], gold_df["y"].astype(int)))
    if not resume and (state_dir / "state.json").exists():
        if cfg.output.mode != "overwrite":
            raise ConfigError(f"output.path: {out} holds a loop already; use --resume or output.mode: overwrite")
        import shutil

        shutil.rmtree(out)  # a new loop must not inherit the old one's annotations
    store, pool_ids, n_flagged = PoolStore.build(cfg.pool, cfg.pipeline.stage_num_cpus, out)
    test_ids, loop_ids = _split(cfg, pool_ids, gold)
    if resume:
        state = LoopState.load(state_dir)
        if state.labels != labels:
            raise ConfigError(f"resume: the saved loop has labels {state.labels}; the config has {labels}")
    else:
        state = LoopState(labels=labels, pool_ids=list(loop_ids), seed=L.seed)
    coord = coordinator_actor().remote(state, str(state_dir), L.strategy, L.subsample, L.annotation,
                                       L.aggregator, L.discrepancy_alpha, L.negative_threshold)
    test_y = np.array([gold[i] for i in test_ids])
    scorer = _Scorer(cfg, store)
    train_fn = train_classifier if cfg.classifier.trainer == "ray" else train_local
    annotate = L.annotation != "gold"
    if annotate:  # once per loop: every round's queries go through the same deployments
        deploy_annotators(cfg.app_config(), cfg.ray.serve_app_name)
    # The newest model's predictions for the next round's candidates, made in the same pass as its
    # test scores (None after a resume: made at the next query).
    scored: tuple[int, pd.DataFrame, np.ndarray | None] | None = None
    try:
        while state.round <= L.rounds:
            r = state.round
            info: dict[str, Any] = {"annotation_accuracy": None}
            clock = _PhaseClock()
            if r == 0:
                rng = np.random.default_rng([L.seed, 0])
                candidates = [i for i in state.pool_ids if i in gold]
                if len(candidates) < L.initial_gold:
                    raise SchemaError(f"initial gold: {len(candidates)} pool rows have gold labels; "
                                      f"{L.initial_gold} requested")
                init = rng.choice(np.asarray(candidates, dtype=object), L.initial_gold, replace=False).tolist()
                state = ray.get(coord.add_rows.remote([LabeledRow(i, gold[i], "gold") for i in init]))
                if annotate:
                    with clock("annotate"):
                        _annotate(cfg, init, store, ann_dir)
            else:
                clock.start("query")
                if scored is None or scored[0] != r:
                    cand = ray.get(coord.candidates.remote(r))
                    pred, lab_emb = scorer.candidates(state.history[-1]["model_dir"], cand, state)
                else:
                    _, pred, lab_emb = scored
                queried = ray.get(coord.select.remote(pool_view(pred, scorer.copies, lab_emb), L.query_size))
                prev = dict(zip(pred["id"], np.stack(pred["probs"].to_numpy()).argmax(1).tolist()))
                table = None
                if annotate:
                    with clock("annotate"):
                        _annotate(cfg, queried, store, ann_dir)
                        table = read_annotation_table(ann_dir)
                with clock("aggregate"):
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
            frame = rows_frame(store.texts(x.sample_id for x in rows), np.array([x.label for x in rows]),
                               np.array([x.weight for x in rows]), neg)
            val, train = frame.iloc[order[:n_val]], frame.iloc[order[n_val:]]
            lam = lambda_for_round(r, L.lambda_start, L.lambda_step)
            with clock("train"):
                res = train_fn(train, val, C, cfg.classifier, lam, str(out / "train"), f"round-{r}")
            with clock("score"):
                nxt = ray.get(coord.candidates.remote(r + 1)) if r < L.rounds else []
                test_pred, (pred, lab_emb) = scorer.test_and_candidates(res.model_dir, test_ids, nxt, state)
                scored = (r + 1, pred, lab_emb) if nxt else None
            metrics = {"round": r, "n_labeled": len(rows), **_evaluate(test_pred, test_y),
                       "annotation_accuracy": info.get("annotation_accuracy"), "val_accuracy": res.val_accuracy,
                       "epochs": res.epochs_run, "lambda": lam, "model_dir": res.model_dir,
                       "elapsed_s": round(time.monotonic() - t0, 1), "phase_s": clock.seconds}
            state = ray.get(coord.finish_round.remote(metrics))
            store.keep_only([*test_ids, *(x.sample_id for x in state.labeled)])
            logger.info("round %d: %s, seconds %s", r,
                        {k: metrics[k] for k in ("n_labeled", "test_accuracy", "test_macro_f1")}, clock.seconds)
            if on_round is not None:
                on_round(metrics)
    finally:
        if annotate and not cfg.ray.keep_serve_running:
            undeploy_annotators(cfg.ray.serve_app_name)
    return write_report(out, state.history, {"task": cfg.task.name, "strategy": L.strategy,
                                             "annotation": L.annotation, "query_size": L.query_size,
                                             "initial_gold": L.initial_gold, "test_rows": len(test_ids),
                                             "seed": L.seed, "trainer": cfg.classifier.trainer,
                                             "pool_rows": len(pool_ids), "pool_rows_flagged": n_flagged})


class _Scorer:
    """One prediction pass per trained model: the test split, the next round's candidates (with
    weight-noise copies for noise stability and BEMPS) and, for CoreSet, the labelled rows'
    embeddings."""

    def __init__(self, cfg: LoopJobConfig, store: PoolStore) -> None:
        L, c = cfg.loop, cfg.classifier
        self.store = store
        self.copies = L.noise_copies if L.strategy in ("noise-stability", "bemps") else 0
        self.coreset = L.strategy == "coreset"
        self.kw = {"max_length": c.max_length, "copies": self.copies, "noise": L.noise_scale, "seed": L.seed,
                   "local": c.trainer == "local", "threads": c.threads}

    def _run(self, model_dir: str, groups: list[list[str]], noisy: int) -> list[pd.DataFrame]:
        ids = [i for g in groups for i in g]
        flags = np.zeros(len(ids), bool)
        start = sum(len(g) for g in groups[:noisy])
        flags[start:start + len(groups[noisy])] = True
        df = pd.DataFrame({"id": ids, "text": self.store.texts(ids), NOISY: flags})
        pred = predict_frame(df, model_dir, **self.kw)
        parts, k = [], 0
        for g in groups:
            parts.append(pred.iloc[k:k + len(g)].reset_index(drop=True))
            k += len(g)
        return parts

    def _labeled(self, state: LoopState) -> list[str]:
        return [x.sample_id for x in state.labeled] if self.coreset else []

    def candidates(self, model_dir: str, cand: list[str], state: LoopState) -> tuple[pd.DataFrame, np.ndarray | None]:
        pred, lab = self._run(model_dir, [cand, self._labeled(state)], noisy=0)
        return pred, (np.stack(lab["embeddings"].to_numpy()) if self.coreset else None)

    def test_and_candidates(self, model_dir: str, test: list[str], cand: list[str],
                            state: LoopState) -> tuple[pd.DataFrame, tuple[pd.DataFrame, np.ndarray | None]]:
        lab_ids = self._labeled(state) if cand else []
        test_pred, pred, lab = self._run(model_dir, [test, cand, lab_ids], noisy=1)
        return test_pred, (pred, np.stack(lab["embeddings"].to_numpy()) if self.coreset and cand else None)


class _PhaseClock:
    """Wall seconds per phase of a round (query, annotate, aggregate, train, evaluate)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._open: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        """Open a phase that ends when the next one opens (or with the next ``with``)."""
        self._close()
        self._open = (name, time.monotonic())

    def _close(self) -> None:
        if self._open is not None:
            name, t = self._open
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - t, 2)
            self._open = None

    def __call__(self, name: str) -> "_PhaseClock":
        self.start(name)
        return self

    def __enter__(self) -> "_PhaseClock":
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()


def _annotate(cfg: LoopJobConfig, ids: list[str], store: PoolStore, ann_dir: Path) -> None:
    """Annotate ``ids`` through the running annotator deployments into the loop's table (exactly
    once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from molal_ray.pipeline.label_job import run_label_job

    qdir = ann_dir.parent / "queries"
    qdir.mkdir(parents=True, exist_ok=True)
    path = qdir / f"query-{len(list(qdir.glob('*.parquet'))):04d}.parquet"
    pq.write_table(pa.table({"id": ids, "text": store.texts(ids)}), path)
    run_label_job(cfg.label_job(str(path), str(ann_dir)), deploy=False)
