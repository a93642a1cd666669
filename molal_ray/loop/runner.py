"""`molal-ray run`: the MoLLIA loop on Ray, driven from here, run by the coordinator actor.

The driver prepares the pool once (Ray Data; ``pool_store``), with ``classifier.mode: head``
embeds it once (``embeddings``), deploys the annotators once, starts the coordinator actor and asks
it for one round at a time; each call returns that round's
metrics, and nothing pool-sized crosses to the driver. The coordinator saves the state after
every round; ``resume`` continues at the next. At the end the driver writes the report from the
rounds' history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq

from molal_ray.config.loop import LoopJobConfig
from molal_ray.exceptions import ConfigError, MolalError
from molal_ray.layout import LoopLayout
from molal_ray.lock import OutputLock
from molal_ray.loop.actor import CoordinatorActor
from molal_ray.loop.report import write_report
from molal_ray.pipeline.pool_store import FLAGGED_SCHEMA, PreparedPool
from molal_ray.preflight import check_files

logger = logging.getLogger("molal_ray.loop")


def _write_flagged(pool: PreparedPool, out: LoopLayout) -> None:
    """List the flagged pool rows in ``OUT/pool_flagged.parquet`` (file by file)."""
    with out.flagged_pool.open_write() as f, pq.ParquetWriter(f, FLAGGED_SCHEMA) as w:
        for batch in pool.iter_flagged():
            w.write_batch(batch)


def _get(ref: Any) -> Any:
    """``ray.get``, re-raising our own errors from the actor as they are (not wrapped)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, MolalError):
            raise exc.cause from None
        raise


PhaseSink = Callable[[int | None, str], None]
"""``(round or None before the rounds, phase)``: what the loop is doing now (progress displays)."""


def check_inputs(cfg: LoopJobConfig, out: LoopLayout, resume: bool) -> None:
    """What a user can get wrong, checked before Ray starts: every file the config names
    (:func:`molal_ray.preflight.check_files`: pool, gold, recordings, models, few-shot examples),
    for --resume, a saved loop to resume, and with a Label Studio review backend its token, server
    and project (created, or its labeling config checked)."""
    check_files(cfg)
    if resume and not out.state_file.exists():
        raise ConfigError(
            f"--resume: {out.root} holds no saved loop ({out.STATE}/{out.STATE_FILE}); run without "
            "--resume to start one"
        )
    if cfg.review.backend == "label_studio" and cfg.loop.n_human() and cfg.loop.annotation != "gold":
        # the token, the server and the project's labeling config, before any LLM is asked
        from molal_ray.review.label_studio import LabelStudioReview

        backend = LabelStudioReview(cfg.review, cfg.task.labels)
        try:
            backend.project()
        finally:
            backend.close()


def prepare_output(cfg: LoopJobConfig, out: LoopLayout, resume: bool) -> None:
    """A new loop must not inherit an old one's annotations, state or models."""
    if resume or not out.state_file.exists():
        return
    if cfg.output.mode != "overwrite":
        raise ConfigError(f"output.path: {out.root} holds a loop already; use --resume or output.mode: overwrite")
    for sub in out.root.list():
        if sub.base_name != out.LOG:
            out.root.join(sub.base_name).delete_file()
    for name in out.run_folders:
        out.root.join(name).delete_dir()


def prepare_pool(cfg: LoopJobConfig, out: LoopLayout) -> PreparedPool:
    """The pool read once into the output's prepared pool (reused when it matches), its flagged
    rows listed, and with ``classifier.mode: head`` its embeddings computed once."""
    pool = PreparedPool.build(cfg.pool, out.pool, num_cpus=cfg.pipeline.stage_num_cpus)
    if pool.n_flagged:
        logger.warning(
            "%d pool rows are flagged and left out of the loop (%s)",
            pool.n_flagged,
            ", ".join(f"{k}={v}" for k, v in sorted(pool.manifest.flagged_by_kind.items())),
        )
    _write_flagged(pool, out)
    return pool


def run_rounds(
    cfg: LoopJobConfig, resume: bool, on_round: Callable[[dict[str, Any]], None] | None, on_phase: PhaseSink
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """Start the coordinator actor and have it run every remaining round; returns the history,
    the number of test rows and the labels' quality on gold rows."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node (the gold file and the config's other local paths are read there);
    # two threads, so that the driver can ask which phase runs while a round runs.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=2)(CoordinatorActor)  # type: ignore[call-overload]
    # Label Studio's token goes to the coordinator as an argument: the driver's environment is not
    # the actor's on a cluster, and the token stays out of the config, the runtime env and logs.
    token = None
    if cfg.review.backend == "label_studio" and cfg.loop.n_human():
        from molal_ray.review.label_studio import token_from_env

        token = token_from_env(cfg.review)
    coord = actor.options(scheduling_strategy=here).remote(cfg.model_dump(mode="json"), resume, token)
    try:
        done = _get(coord.history.remote())  # a resumed loop's finished rounds
        prev_labeled = done[-1]["n_labeled"] if done else None
        while True:
            ref = coord.run_round.remote()
            last = None
            while not ray.wait([ref], timeout=0.5)[0]:
                now = _get(coord.phase.remote())
                if now != last and now[1] is not None:
                    on_phase(*now)
                    last = now
            metrics = _get(ref)
            if metrics is None:
                break
            if prev_labeled is not None and metrics["n_labeled"] - prev_labeled < cfg.loop.query_size:
                logger.warning(
                    "round %d queried %d rows, fewer than loop.query_size (%d): the pool has no more "
                    "unlabelled rows outside the test split",
                    metrics["round"],
                    metrics["n_labeled"] - prev_labeled,
                    cfg.loop.query_size,
                )
            prev_labeled = metrics["n_labeled"]
            logger.info(
                "round %d: %s, seconds %s",
                metrics["round"],
                {k: metrics[k] for k in ("n_labeled", "test_accuracy", "test_macro_f1")},
                metrics["phase_s"],
            )
            if metrics.get("text_view"):
                logger.info("round %d: the aggregator's text view: %s", metrics["round"], metrics["text_view"]["note"])
            if on_round is not None:
                on_round(metrics)
        history = ray.get(coord.history.remote())
        test_rows = ray.get(coord.info.remote())["test_rows"]
        gold = ray.get(coord.gold_report.remote())
        ray.get(coord.close.remote())
    finally:
        ray.kill(coord)
    return history, test_rows, gold


def run_loop(
    cfg: LoopJobConfig,
    *,
    resume: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_phase: PhaseSink | None = None,
) -> dict[str, Any]:
    """The whole loop: output, pool (and embeddings), annotators, rounds, report."""
    out = LoopLayout.at(cfg.output.path)
    check_inputs(cfg, out, resume)
    with OutputLock(out.root, "run"):  # one job at a time writes the folder
        return _loop(cfg, out, resume, on_round, on_phase or (lambda r, p: None))


def _loop(
    cfg: LoopJobConfig,
    out: LoopLayout,
    resume: bool,
    on_round: Callable[[dict[str, Any]], None] | None,
    phase: PhaseSink,
) -> dict[str, Any]:
    from molal_ray.pipeline.embeddings import cache_root, shared_store
    from molal_ray.runtime import check_paths_reach_every_node, ensure_ray, start_annotators, stop_annotators

    settings = cfg.loop
    phase(None, "starting Ray")
    ensure_ray(cfg.ray)
    check_paths_reach_every_node(
        [("output.path", cfg.output.path, cfg.output.shared), ("pool.path", cfg.pool.path, cfg.pool.shared)]
    )
    prepare_output(cfg, out, resume)
    phase(None, "preparing the pool")
    pool = prepare_pool(cfg, out)
    if cfg.classifier.mode == "head":
        phase(None, f"embedding {pool.n_usable:,} texts with the frozen encoder")
        shared_store(pool, cache_root(out.root, cfg.classifier), cfg.classifier)
    # Once per loop: every round's queries go through the same deployments.
    ours = False
    if settings.annotation != "gold":
        phase(None, "starting the annotators")
        ours = start_annotators(cfg.app_config(), cfg.ray.serve_app_name)
    try:
        history, test_rows, gold = run_rounds(cfg, resume, on_round, phase)
    finally:
        stop_annotators(cfg.ray.serve_app_name, ours, cfg.ray.keep_serve_running)
    phase(None, "writing the report")
    report = write_report(
        out,
        history,
        {
            "task": cfg.task.name,
            "strategy": settings.strategy,
            "annotation": settings.annotation,
            "query_size": settings.query_size,
            "initial_gold": settings.initial_gold,
            "test_rows": test_rows,
            "seed": settings.seed,
            "trainer": cfg.classifier.trainer,
            "classifier_mode": cfg.classifier.mode,
            "pool_rows": pool.n_usable,
            "pool_rows_flagged": pool.n_flagged,
        },
        gold,
    )
    phase(None, "exporting the classifier and the labels")
    from molal_ray.products import export_loop

    export_loop(out.root)  # OUT/model (the last round's classifier) and OUT/labels.parquet
    return report
