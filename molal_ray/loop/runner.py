"""`molal-ray run`: the MoLLIA loop on Ray, driven from here, run by the coordinator actor.

The driver prepares the pool once (Ray Data; ``pool_store``), deploys the annotators once,
starts the coordinator actor and asks it for one round at a time; each call returns that round's
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
from molal_ray.loop.actor import POOL_DIR, STATE_DIR, CoordinatorActor
from molal_ray.loop.report import write_report
from molal_ray.loop.state import STATE_FILE
from molal_ray.pipeline.pool_store import FLAGGED_SCHEMA, PreparedPool
from molal_ray.storage import Location, resolve

logger = logging.getLogger("molal_ray.loop")

FLAGGED_POOL = "pool_flagged.parquet"  # pool rows left out of the loop, with why


def _write_flagged(pool: PreparedPool, out: Location) -> None:
    """List the flagged pool rows in ``OUT/pool_flagged.parquet`` (file by file)."""
    with out.join(FLAGGED_POOL).open_write() as f, pq.ParquetWriter(f, FLAGGED_SCHEMA) as w:
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


def run_loop(cfg: LoopJobConfig, *, resume: bool = False,
             on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from molal_ray.runtime import check_paths_reach_every_node, ensure_ray, start_annotators, stop_annotators

    L = cfg.loop
    out = resolve(cfg.output.path, field="output.path")
    ensure_ray(cfg.ray)
    check_paths_reach_every_node([("output.path", cfg.output.path, cfg.output.shared),
                                  ("pool.path", cfg.pool.path, cfg.pool.shared)])
    if not resume and out.join(STATE_DIR, STATE_FILE).exists():
        if cfg.output.mode != "overwrite":
            raise ConfigError(f"output.path: {out} holds a loop already; use --resume or output.mode: overwrite")
        for sub in out.list():  # a new loop must not inherit the old one's annotations or state
            out.join(sub.base_name).delete_file()
        for name in (STATE_DIR, "annotations", "train"):
            out.join(name).delete_dir()
    pool = PreparedPool.build(cfg.pool, out.join(POOL_DIR), num_cpus=cfg.pipeline.stage_num_cpus)
    if pool.n_flagged:
        logger.warning("%d pool rows are flagged and left out of the loop (%s)", pool.n_flagged,
                       ", ".join(f"{k}={v}" for k, v in sorted(pool.manifest.flagged_by_kind.items())))
    _write_flagged(pool, out)
    # Once per loop: every round's queries go through the same deployments.
    ours = start_annotators(cfg.app_config(), cfg.ray.serve_app_name) if L.annotation != "gold" else False
    try:
        # On the driver's node: the gold file and the config's other local paths are read there.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        coord = ray.remote(num_cpus=0, max_restarts=0)(CoordinatorActor).options(scheduling_strategy=here) \
            .remote(cfg.model_dump(mode="json"), resume)
        while (metrics := _get(coord.run_round.remote())) is not None:
            logger.info("round %d: %s, seconds %s", metrics["round"],
                        {k: metrics[k] for k in ("n_labeled", "test_accuracy", "test_macro_f1")}, metrics["phase_s"])
            if on_round is not None:
                on_round(metrics)
        history = ray.get(coord.history.remote())
        test_rows = ray.get(coord.info.remote())["test_rows"]
        ray.kill(coord)
    finally:
        stop_annotators(cfg.ray.serve_app_name, ours, cfg.ray.keep_serve_running)
    return write_report(out, history, {"task": cfg.task.name, "strategy": L.strategy, "annotation": L.annotation,
                                       "query_size": L.query_size, "initial_gold": L.initial_gold,
                                       "test_rows": test_rows, "seed": L.seed, "trainer": cfg.classifier.trainer,
                                       "pool_rows": pool.n_usable, "pool_rows_flagged": pool.n_flagged})
