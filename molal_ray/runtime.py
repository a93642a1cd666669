"""Starting or joining Ray, and the annotator Serve application (thin shell)."""

from __future__ import annotations

import logging
import os
from typing import Any

from molal_ray.config import AnnotatorAppConfig, RayConfig
from molal_ray.engines.base import Engine

logger = logging.getLogger("molal_ray")


def ensure_ray(cfg: RayConfig) -> None:
    """Join the configured cluster, or start a local embedded runtime; no-op if Ray is up."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": cfg.log_to_driver}
    if cfg.address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs.update(num_cpus=cfg.num_cpus, include_dashboard=False)
    else:
        kwargs["address"] = cfg.address
    ray.init(**kwargs)
    # Our own progress display replaces Ray Data's bars.
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def deploy_annotators(app: AnnotatorAppConfig, app_name: str,
                      engine_cls: type[Engine] | None = None) -> None:
    """Deploy (or update in place) the annotator application; no HTTP proxy, no route."""
    from ray import serve

    from molal_ray.serve.app import build_annotator_app

    serve.start(proxy_location="Disabled")
    serve.run(build_annotator_app(app, engine_cls), name=app_name, route_prefix=None, blocking=False)


def undeploy_annotators(app_name: str) -> None:
    from ray import serve

    try:
        serve.delete(app_name)
    except Exception as exc:  # noqa: BLE001 - best effort at shutdown
        logger.warning("could not delete Serve app %s: %s", app_name, exc)
