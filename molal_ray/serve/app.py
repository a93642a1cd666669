"""Build the annotator Serve application from the project's config models.

``serve deploy serve_configs/annotators-gpu.yaml`` imports :func:`build_app` with the YAML
``args``; the label job calls :func:`build_annotator_app` with its config (and, in tests, an
injected engine class).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application, Deployment

from molal_ray.config import AnnotatorAppConfig, AnnotatorConfig
from molal_ray.engines.base import Engine
from molal_ray.serve import INGRESS_NAME
from molal_ray.serve.deployment import AnnotatorDeployment, AnnotatorsIngress

HEALTH_CHECK_PERIOD_S = 10.0
# Engines load models in the constructor; vLLM on a GPU can take minutes.
HEALTH_CHECK_TIMEOUT_S = 60.0


def deployment_options(annotator: AnnotatorConfig) -> dict[str, Any]:
    """Serve options of one annotator's deployment (resources, replicas, autoscaling)."""
    res = annotator.resources
    opts: dict[str, Any] = {
        "name": annotator.name,
        "ray_actor_options": {
            "num_cpus": res.num_cpus,
            "num_gpus": res.num_gpus,
            **({"resources": dict(res.resources)} if res.resources else {}),
        },
        "max_ongoing_requests": res.max_ongoing_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        # One log line per batch call floods a job's output; errors are still logged.
        "logging_config": {"enable_access_log": False},
    }
    if res.autoscaling is not None:
        opts["autoscaling_config"] = {
            "min_replicas": res.autoscaling.min_replicas,
            "max_replicas": res.autoscaling.max_replicas,
            "target_ongoing_requests": res.autoscaling.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = res.num_replicas
    return opts


def build_annotator_app(config: AnnotatorAppConfig, engine_cls: type[Engine] | None = None) -> Application:
    """One deployment per annotator, bound under a small ingress."""
    dep: Deployment = serve.deployment(AnnotatorDeployment)  # type: ignore[assignment]  # Serve's stubs
    children = [
        # Replicas get everything but their resources: changing the replica count or autoscaling
        # range then changes the deployment's options only, and running replicas stay.
        dep.options(**deployment_options(a)).bind(
            a.model_dump(mode="json", exclude={"resources"}), config.task.model_dump(mode="json"), engine_cls
        )
        for a in config.annotators
    ]
    ingress_dep: Deployment = serve.deployment(AnnotatorsIngress)  # type: ignore[assignment]  # Serve's stubs
    ingress = ingress_dep.options(name=INGRESS_NAME, ray_actor_options={"num_cpus": 0})
    return ingress.bind([a.name for a in config.annotators], *children)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run`` / ``serve deploy`` (args validated strictly)."""
    return build_annotator_app(AnnotatorAppConfig.from_dict(dict(args), source="serve app args"))
