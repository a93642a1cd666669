"""Starting or joining Ray, and the annotator Serve application (thin shell)."""

from __future__ import annotations

import logging
import os
from typing import Any

from molal_ray.config import AnnotatorAppConfig, RayConfig
from molal_ray.engines.base import Engine
from molal_ray.exceptions import ConfigError

logger = logging.getLogger("molal_ray")


LOOPBACK = "127.0.0.1"


def init_local(**kwargs: Any) -> None:
    """``ray.init`` of a new embedded runtime that only this machine can reach: every Ray server
    (GCS, raylet, workers, agents) listens on 127.0.0.1. Token authentication is on, as Ray
    (2.59 and later) turns it on for a new local runtime unless ``RAY_AUTH_MODE`` says otherwise;
    it makes the token itself (``~/.ray/auth_token``)."""
    import ray
    from ray._private import services

    # ray.init turns a loopback node address into the machine's routable one, so that other nodes
    # could join; an embedded runtime has no other nodes, so the loopback address is kept.
    resolve = getattr(services, "resolve_ip_for_localhost", None)
    if resolve is not None:
        services.resolve_ip_for_localhost = lambda host: host if host == LOOPBACK else resolve(host)
    try:
        ray.init(address="local", _node_ip_address=LOOPBACK, **kwargs)
    finally:
        if resolve is not None:
            services.resolve_ip_for_localhost = resolve


def long_blocks(ds: Any) -> Any:
    """``ds`` (a lazy Ray Dataset) without Ray Data's no-progress guard, which fails an execution
    in which no block moved for 30 minutes (``ExecutionTimeoutError``). Our stages that work a
    whole block before they output anything (the annotate stage waiting on LLMs, a bucket's
    embeddings) legitimately take longer than that on slow annotators or CPUs: measured here, a
    label job of 2,000 texts on a CPU vLLM (0.5 texts/s, one block) was stopped after 30 minutes of
    its hour. What bounds the wait instead: each annotator call's ``pipeline.request_timeout_s``
    and retries, after which its rows are flagged. The setting is the dataset's own (its context
    is a copy), so other datasets keep the guard."""
    ds.context.execution_no_progress_timeout_s = -1
    return ds


REACH_TIMEOUT_S = 5.0


def check_reachable(address: str, field: str = "ray.address") -> None:
    """A ConfigError within seconds when nothing answers at a cluster's ``host:port`` (Ray itself
    keeps retrying for minutes, silently); ``auto`` and ``local`` are left to Ray."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or address in ("auto", "local"):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"{field}: nothing answers at {address} ({exc.strerror or exc}); is the Ray head running, "
            "and does its port reach this machine?"
        ) from None


def ensure_ray(cfg: RayConfig) -> None:
    """Join the configured cluster, or start a local embedded runtime; no-op if Ray is up."""
    import ray

    if ray.is_initialized():  # started by the caller (a notebook, a test): our Ray Data settings still hold
        _data_settings()
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": cfg.log_to_driver}
    if not cfg.log_to_driver:
        kwargs["logging_level"] = logging.WARNING
    local = cfg.address is None and not os.environ.get("RAY_ADDRESS")
    if not cfg.log_to_driver:
        from molal_ray.console import quiet_ray_loggers

        quiet_ray_loggers()  # Ray's INFO lines go to its log files only
    if local:  # a new embedded runtime, even when a `ray start` head runs on this machine
        init_local(num_cpus=cfg.num_cpus, include_dashboard=False, **kwargs)
    else:
        address = cfg.address or os.environ["RAY_ADDRESS"]
        check_reachable(address, "ray.address" if cfg.address else "RAY_ADDRESS")
        ray.init(address=cfg.address, **kwargs)
    _data_settings()
    from molal_ray.console import said_once

    said_once()


def _data_settings() -> None:
    """This driver's Ray Data settings (its ``DataContext``), whoever started Ray."""
    # Our own progress display replaces Ray Data's bars.
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # An error of ours in a stage (a StorageError, a SchemaError) reaches the driver as itself,
    # not as a UserCodeException that loses it on the way (a pickled exception drops __cause__);
    # Ray Data's own log of it is left out (the caller says it: console.said_once).
    ctx.raise_original_map_exception = True


def check_paths_reach_every_node(paths: list[tuple[str, str, bool]]) -> None:
    """On a cluster of more than one node, refuse a local path that is not marked shared: the
    tasks and actors that read or write it may run on a node that does not have it.
    ``paths``: (config field, path, marked shared)."""
    import ray

    from molal_ray.storage import is_uri

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    for field, path, shared in paths:
        if (not is_uri(path) or path.startswith("file://")) and not shared:
            section = field.rsplit(".", 1)[0]
            raise ConfigError(
                f"{field}: got the local path {path!r}, but this Ray cluster has {len(nodes)} nodes and "
                f"the others cannot see it; expected a URI (s3://bucket/..., gs://...) or "
                f"{section}.shared: true for a mount every node has"
            )


def start_annotators(app: AnnotatorAppConfig, app_name: str, engine_cls: type[Engine] | None = None) -> bool:
    """Use the running annotator application when it matches the job, else deploy it; returns
    whether this job deployed it (and so may delete it at the end)."""
    from molal_ray.serve.control import use_or_deploy

    return use_or_deploy(app, app_name, engine_cls)


def stop_annotators(app_name: str, deployed_here: bool, keep_running: bool) -> None:
    """Delete the annotator application if this job deployed it (never an operator's)."""
    if not deployed_here or keep_running:
        return
    from molal_ray.serve.control import delete

    try:
        delete(app_name)
    except Exception as exc:  # noqa: BLE001 - best effort at shutdown
        logger.warning("could not delete Serve app %s: %s", app_name, exc)
