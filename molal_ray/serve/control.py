"""The annotator application on a running cluster: use it, deploy it, scale it, report on it.

A job uses an annotator application that is already running when every one of its annotators is
there with the same fingerprint (task and engine settings); it refuses, naming the differences,
when one is missing or differs; it deploys the application only when none is running, and it
deletes only an application it deployed itself.

Applications are deployed declaratively, through Serve's controller (the same state
``serve deploy CONFIG.yaml`` writes, no dashboard needed), so ``scale`` can change one
deployment's replicas (or autoscaling range) in place: Serve adds or removes replicas while the
others keep answering, and a request in flight on a replica being removed finishes first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import ray.serve  # noqa: F401  (every use below; its import sets its logger, quieted again here)

from molal_ray.config import AnnotatorAppConfig
from molal_ray.console import serve_imported
from molal_ray.engines.base import Engine
from molal_ray.exceptions import AnnotatorError, ConfigError, exceptions_in, one_line
from molal_ray.serve import INGRESS_NAME
from molal_ray.serve.fingerprint import differences, fingerprint

logger = logging.getLogger("molal_ray.serve")
serve_imported()

BUILDER = "molal_ray.serve.app:build_app"


def _client():
    """Serve's controller client. Private to Serve, but the only way to apply declarative
    applications (what `serve deploy` sends through the dashboard) without a dashboard, and to
    read their declared config back (scale changes one deployment of it in place)."""
    from ray.serve.context import _get_global_client

    return _get_global_client()


T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout_s: float, every_s: float = 0.5) -> T | None:
    """``check()`` every ``every_s`` seconds until it returns something other than None (that
    value) or ``timeout_s`` passed (None); it is always called at least once."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got is not None or time.monotonic() > deadline:
            return got
        time.sleep(every_s)


def app_details(app_name: str) -> dict[str, Any] | None:
    """Serve's details of a live application (None when there is none)."""
    from ray import serve

    if app_name not in serve.status().applications:
        return None
    return _client().get_serve_details().get("applications", {}).get(app_name)


def replica_error(message: str | None) -> str | None:
    """The replica's own exception (``Type: message``, the last one of the traceback Serve puts
    in a deployment's status message), or None when the message holds none."""
    if not message or "Error:" not in message:
        return None
    found = exceptions_in(message.splitlines())
    return found[-1] if found else None


def last_line(message: str | None) -> str:
    """The last non-empty line of a status message (a traceback's is its exception), on one line."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else "no message"


PLACEMENT_GRACE_S = 60.0  # how long a replica that fits no node is waited for (an autoscaler may add one)


def unplaceable(request: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why a replica asking for ``request`` (``CPU``, ``GPU``, custom resources) fits on none of
    ``nodes`` (each node's total resources), in a few words; None when one node can hold it."""
    wanted = {k: v for k, v in request.items() if v > 0}
    if any(all(node.get(k, 0.0) >= v for k, v in wanted.items()) for node in nodes):
        return None
    short = [k for k, v in wanted.items() if max((n.get(k, 0.0) for n in nodes), default=0.0) < v]
    lacking = short or list(wanted)
    return (
        "asks for "
        + ", ".join(f"{wanted[k]:g} {k}" for k in lacking)
        + " per replica; the largest node has "
        + ", ".join(f"{max((n.get(k, 0.0) for n in nodes), default=0.0):g} {k}" for k in lacking)
        + ("" if short else " (never all of them on one node)")
    )


def replica_request(annotator: Any) -> dict[str, float]:
    """The resources one replica of an annotator (``AnnotatorConfig``) asks Ray for."""
    res = annotator.resources
    return {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.resources}


def _placement_problems(app: Any) -> list[str]:
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    return [
        f"annotator {a.name!r} {why}"
        for a in app.annotators
        if (why := unplaceable(replica_request(a), nodes)) is not None
    ]


def _wait_running(app_name: str, timeout_s: float, config: Any = None) -> None:
    """Until the application runs: its replicas' own errors, a replica that fits no node for
    ``PLACEMENT_GRACE_S`` (``config``: the ``AnnotatorAppConfig`` it was deployed with) and the
    timeout are each one :class:`AnnotatorError`."""
    from ray import serve

    state = ["absent"]
    t0 = time.monotonic()

    def running() -> bool | None:
        app = serve.status().applications.get(app_name)
        state[0] = str(app.status) if app is not None else "absent"
        if app is not None and app.status == "DEPLOY_FAILED":
            causes = [
                f"annotator {name!r} could not start: {cause}"
                for name, d in app.deployments.items()
                if (cause := replica_error(d.message))
            ]
            raise AnnotatorError(
                f"annotator application {app_name!r} failed to deploy: "
                + ("; ".join(causes) if causes else last_line(app.message))
            )
        if app is not None and app.status == "RUNNING":
            return True
        if config is not None and time.monotonic() - t0 > PLACEMENT_GRACE_S:
            problems = _placement_problems(config)
            if problems:  # Serve would wait for them silently until the timeout
                raise AnnotatorError(
                    f"annotator application {app_name!r} cannot start in {PLACEMENT_GRACE_S:.0f}s: "
                    + "; ".join(problems)
                    + ": lower its resources, or add nodes that have them"
                )
        return None

    if poll(running, timeout_s) is None:
        raise AnnotatorError(
            f"annotator application {app_name!r} is not running after {timeout_s:.0f}s (status {state[0]})"
        )


def running_annotators(app_name: str, timeout_s: float = 600.0) -> dict[str, dict[str, Any]] | None:
    """``info()`` of every annotator of the running application (None when none is running)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None or app.status == "DELETING":
        return None
    _wait_running(app_name, timeout_s)
    names = [d for d in serve.status().applications[app_name].deployments if d != INGRESS_NAME]
    return {d: serve.get_deployment_handle(d, app_name).info.remote().result(timeout_s=timeout_s) for d in names}


def _app_schema(app: AnnotatorAppConfig, app_name: str) -> dict[str, Any]:
    return {"name": app_name, "import_path": BUILDER, "route_prefix": None, "args": app.model_dump(mode="json")}


def _apply(applications: list[dict[str, Any]]) -> None:
    """Apply the declarative config of every application (Serve replaces the whole set)."""
    from ray.serve.schema import ServeDeploySchema

    _client().deploy_apps(ServeDeploySchema.model_validate({"applications": applications}), _blocking=False)


def _declared_apps() -> dict[str, dict[str, Any]]:
    """The declarative config of each application deployed that way (by ``serve deploy`` or
    by molal_ray)."""
    apps = _client().get_serve_details().get("applications", {})
    return {name: a["deployed_app_config"] for name, a in apps.items() if a.get("deployed_app_config")}


def deploy(
    app: AnnotatorAppConfig, app_name: str, engine_cls: type[Engine] | None = None, timeout_s: float = 1800.0
) -> None:
    """Deploy (or update) the annotator application and wait until it runs. With ``engine_cls``
    (tests inject fake engines) it is deployed from Python with ``serve.run`` instead, and
    cannot be scaled from a config."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    if engine_cls is not None:
        from molal_ray.serve.app import build_annotator_app

        serve.run(build_annotator_app(app, engine_cls), name=app_name, route_prefix=None, blocking=False)
    else:
        declared = _declared_apps()
        declared[app_name] = _app_schema(app, app_name)
        _apply(list(declared.values()))
    _wait_running(app_name, timeout_s, app)


def use_or_deploy(app: AnnotatorAppConfig, app_name: str, engine_cls: type[Engine] | None = None) -> bool:
    """Use the running application if it matches ``app`` (False), else deploy it (True); refuse
    a running application that does not match, naming what differs."""
    running = running_annotators(app_name)
    if running is None:
        deploy(app, app_name, engine_cls)
        return True
    problems = []
    for a in app.annotators:
        if a.name not in running:
            problems.append(f"annotator {a.name!r} is not running (running: {sorted(running)})")
            continue
        diff = differences(fingerprint(a, app.task), running[a.name].get("fingerprint", {}))
        problems += [f"annotator {a.name!r}: {d}" for d in diff]
    if problems:
        raise ConfigError(
            f"the running annotator application {app_name!r} does not answer as this job asks:\n  "
            + "\n  ".join(problems)
            + "\nexpected the same task and engine settings: change the job, "
            "set ray.serve_app_name to another application, or delete the running one"
        )
    logger.info("using the running annotator application %r", app_name)
    return False


def delete(app_name: str) -> None:
    from ray import serve

    declared = _declared_apps()
    if app_name in declared:  # keep the other declarative applications as they are
        _apply([a for n, a in declared.items() if n != app_name])
        poll(lambda: True if app_name not in serve.status().applications else None, 120)
    else:
        serve.delete(app_name)
    from molal_ray.serve.stats import stats_actor

    actor = stats_actor(app_name, create=False)
    if actor is not None:
        import ray

        ray.kill(actor)


@dataclass
class AnnotatorStatus:
    name: str
    status: str
    running: int
    target: int
    autoscaling: dict[str, Any] | None
    ongoing_requests: int | None
    rows_per_s: float | None
    rows: int | None


def status(app_name: str) -> list[AnnotatorStatus]:
    """Per annotator: replicas running / target, health, requests in flight, rows/s."""
    import ray

    from molal_ray.serve.stats import stats_actor

    details = app_details(app_name)
    if details is None:
        raise ConfigError(f"annotators: no application {app_name!r} is running on this cluster")
    actor = stats_actor(app_name, create=False)
    live = ray.get(actor.snapshot.remote(), timeout=30) if actor is not None else {}
    out = []
    for name, d in sorted(details["deployments"].items()):
        if name == INGRESS_NAME:
            continue
        cfg = d.get("deployment_config", {})
        s = live.get(name, {})
        out.append(
            AnnotatorStatus(
                name=name,
                status=str(d.get("status")),
                target=int(d.get("target_num_replicas", 0)),
                running=sum(1 for r in d.get("replicas", []) if r.get("state") == "RUNNING"),
                autoscaling=cfg.get("autoscaling_config"),
                ongoing_requests=s.get("ongoing_requests"),
                rows_per_s=s.get("rows_per_s"),
                rows=s.get("rows"),
            )
        )
    return out


def check_scale_target(replicas: int | None, min_replicas: int | None, max_replicas: int | None) -> None:
    """A ConfigError for a scale target that is not one (asked before any cluster is reached)."""
    if (replicas is None) == (min_replicas is None and max_replicas is None):
        raise ConfigError("scale: expected --replicas N, or --min N and --max M (one or the other)")
    if replicas is not None and replicas < 1:
        raise ConfigError(f"scale: --replicas got {replicas}; expected at least 1")
    if replicas is None and (
        min_replicas is None or max_replicas is None or not 0 <= min_replicas <= max_replicas or max_replicas < 1
    ):
        raise ConfigError(f"scale: got --min {min_replicas} --max {max_replicas}; expected 0 <= min <= max, max >= 1")


def scale(
    app_name: str,
    annotator: str,
    *,
    replicas: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    wait_s: float = 600.0,
) -> float:
    """Set one annotator's replica count (or autoscaling range) in place; returns the seconds
    until the new target's replicas answer (0 when not waiting)."""
    from ray import serve

    check_scale_target(replicas, min_replicas, max_replicas)
    declared = _declared_apps()
    if app_name not in declared:
        if app_name in serve.status().applications:
            raise ConfigError(
                f"scale: application {app_name!r} was deployed from Python code, not from a config; "
                "expected one deployed by `serve deploy` or by a molal_ray job"
            )
        raise ConfigError(f"scale: no application {app_name!r} is running on this cluster")
    app = dict(declared[app_name])
    names = [d for d in serve.status().applications[app_name].deployments if d != INGRESS_NAME]
    if annotator not in names:
        raise ConfigError(f"scale: got annotator {annotator!r}; expected one of {sorted(names)}")
    overrides = [d for d in app.get("deployments", []) if d.get("name") != annotator]
    old: dict[str, Any] = next((d for d in app.get("deployments", []) if d.get("name") == annotator), {})
    if replicas is not None:
        new = {**old, "name": annotator, "num_replicas": replicas, "autoscaling_config": None}
    else:
        auto = {**(old.get("autoscaling_config") or {}), "min_replicas": min_replicas, "max_replicas": max_replicas}
        new = {**old, "name": annotator, "num_replicas": "auto", "autoscaling_config": auto}
    app["deployments"] = [*overrides, new]
    declared[app_name] = app
    t0 = time.monotonic()
    _apply(list(declared.values()))
    if not wait_s or replicas is None:
        return 0.0

    def reached() -> float | None:
        dep = app_details(app_name)["deployments"][annotator]  # type: ignore[index]
        running = sum(1 for r in dep.get("replicas", []) if r.get("state") == "RUNNING")
        done = (
            dep.get("target_num_replicas") == replicas
            and running == replicas
            and str(dep.get("status")) in ("HEALTHY", "DeploymentStatus.HEALTHY")
        )
        return time.monotonic() - t0 if done else None

    seconds = poll(reached, wait_s - (time.monotonic() - t0), every_s=0.2)
    if seconds is not None:
        return seconds
    raise AnnotatorError(f"scale: {annotator!r} did not reach {replicas} running replicas in {wait_s:.0f}s")
