"""The pure parts of the annotator application's control: fingerprints and live counters."""

from __future__ import annotations

import time

from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.serve.fingerprint import differences, fingerprint, fingerprint_key
from molal_ray.serve.stats import AnnotatorStats

TASK = TaskConfig(labels=["a", "b"])


def _ann(**engine):
    return AnnotatorConfig(name="m", engine={"type": "replay", "path": "/r.parquet", **engine})


def test_fingerprints_ignore_resources_and_name_what_differs():
    a = _ann()
    scaled = a.model_copy(update={"resources": a.resources.model_copy(update={"num_replicas": 4})})
    assert fingerprint(a, TASK) == fingerprint(scaled, TASK)  # scaling does not change the answers
    hotter = a.model_copy(update={"sampling": a.sampling.model_copy(update={"temperature": 0.2})})
    assert differences(fingerprint(hotter, TASK), fingerprint(a, TASK)) == [
        "sampling.temperature: 0.2 in the job, 0.7 running"
    ]
    other_task = TaskConfig(labels=["a", "b"], prompt_template="Label {text}")
    diff = differences(fingerprint(a, other_task), fingerprint(a, TASK))
    assert len(diff) == 1 and diff[0].startswith("task.prompt_template: 'Label {text}' in the job")
    assert fingerprint_key(fingerprint(a, TASK)) != fingerprint_key(fingerprint(hotter, TASK))


def test_stats_sum_live_replicas_and_rate_over_the_window(monkeypatch):
    s = AnnotatorStats()
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    s.report("r1", "yi", 1, 0)
    s.report("r2", "yi", 2, 0)
    s.report("r3", "qwen", 0, 0)
    now[0] += 4
    s.report("r1", "yi", 1, 40)
    s.report("r2", "yi", 0, 80)
    snap = s.snapshot()
    assert snap["yi"] == {"replicas_reporting": 2, "ongoing_requests": 1, "rows": 120, "rows_per_s": 30.0}
    now[0] += 11  # a replica that stopped reporting (scaled down) drops out
    s.report("r1", "yi", 0, 40)
    assert s.snapshot() == {"yi": {"replicas_reporting": 1, "ongoing_requests": 0, "rows": 40, "rows_per_s": 0.0}}


def test_local_paths_are_refused_on_a_cluster_of_several_nodes(monkeypatch):
    import pytest
    import ray

    from molal_ray.exceptions import ConfigError
    from molal_ray.runtime import check_paths_reach_every_node

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}, {"Alive": False}])
    with pytest.raises(
        ConfigError,
        match=r"output.path: got the local path '/data/out'.*2 nodes.*"
        r"output.shared: true",
    ):
        check_paths_reach_every_node([("output.path", "/data/out", False)])
    check_paths_reach_every_node([("output.path", "/nfs/out", True), ("pool.path", "s3://b/pool", False)])
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    check_paths_reach_every_node([("output.path", "/data/out", False)])  # one node: a local path is fine


def test_a_replicas_own_error_is_read_from_serves_status_message():
    from molal_ray.serve.control import replica_error

    message = (
        "The deployment failed to start 3 times in a row. This may be due to a problem with its "
        "constructor or initial health check failing. See controller logs for details. Error:\n"
        "Traceback (most recent call last):\n"
        '  File "replica.py", line 10, in initialize\n'
        "ray.exceptions.RayTaskError(AnnotatorError): ray::ServeReplica:annotators:ghost.initialize()\n"
        '  File "replay.py", line 3, in start\n'
        "FileNotFoundError: [Errno 2] No such file: 'gone.parquet'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        "molal_ray.exceptions.AnnotatorError: replay engine ghost: recording not found: gone.parquet\n"
    )
    assert replica_error(message) == "AnnotatorError: replay engine ghost: recording not found: gone.parquet"
    assert replica_error("Deploying: waiting for replicas") is None and replica_error(None) is None
    # A wrapper whose message is a traceback is not the cause; an exception named with its module
    # (no Error in its name) is.
    wrapped = (
        'Error:\nTraceback (most recent call last):\n  File "x.py", line 1, in f\n'
        'RuntimeError: Traceback (most recent call last):\n  File "openai.py", line 9, in start\n'
        "httpx.UnsupportedProtocol: Request URL is missing an 'http://' or 'https://' protocol.\n"
    )
    assert replica_error(wrapped) == "UnsupportedProtocol: Request URL is missing an 'http://' or 'https://' protocol."


def test_poll_returns_the_first_answer_or_none_when_the_time_runs_out():
    from molal_ray.serve.control import poll

    answers = iter([None, None, 3])
    assert poll(lambda: next(answers), timeout_s=5, every_s=0.01) == 3
    calls = []
    assert poll(lambda: calls.append(1), timeout_s=0.05, every_s=0.01) is None and len(calls) >= 2
    assert poll(lambda: 0.0, timeout_s=0) == 0.0  # a falsy answer is still an answer


class _FakeServe:
    """Serve's status and controller client as ``scale`` sees them: one declared application
    (two annotators, ``yi`` autoscaled) and one deployed from Python code; applying a config
    records it, and ``yi``'s replicas come up ``ready_after`` detail reads later."""

    def __init__(self, ready_after: int = 2) -> None:
        from types import SimpleNamespace

        from molal_ray.serve import INGRESS_NAME

        self.declared = {
            "name": "annotators",
            "import_path": "molal_ray.serve.app:build",
            "route_prefix": None,
            "args": {},
            "deployments": [
                {"name": "qwen", "num_replicas": 1},
                {
                    "name": "yi",
                    "num_replicas": "auto",
                    "ray_actor_options": {"num_cpus": 2},
                    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
                },
            ],
        }
        self.other = {"name": "other", "import_path": "x:y", "route_prefix": "/o", "args": {}}
        self.applied: list[list[dict]] = []
        self.reads, self.ready_after, self.target = 0, ready_after, 1
        deps = {d: None for d in (INGRESS_NAME, "qwen", "yi")}
        self.status = SimpleNamespace(
            applications={
                "annotators": SimpleNamespace(deployments=deps),
                "other": SimpleNamespace(deployments={}),
                "from-code": SimpleNamespace(deployments={}),
            }
        )

    def get_serve_details(self):
        self.reads += 1
        running = self.target if self.reads > self.ready_after else 1
        yi = {
            "target_num_replicas": self.target,
            "status": "HEALTHY" if running == self.target else "UPDATING",
            "replicas": [{"state": "RUNNING"}] * running,
        }
        return {
            "applications": {
                "annotators": {"deployed_app_config": self.declared, "deployments": {"yi": yi}},
                "other": {"deployed_app_config": self.other, "deployments": {}},
                "from-code": {"deployed_app_config": None, "deployments": {}},
            }
        }

    def deploy_apps(self, config, _blocking=False):
        apps = [a.model_dump(exclude_unset=True) for a in config.applications]
        self.applied.append(apps)
        yi = next(d for a in apps if a["name"] == "annotators" for d in a["deployments"] if d["name"] == "yi")
        if isinstance(yi.get("num_replicas"), int):
            self.target = yi["num_replicas"]
        self.reads = 0


def _fake_serve(monkeypatch, **kw) -> _FakeServe:
    from ray import serve

    from molal_ray.serve import control

    fake = _FakeServe(**kw)
    monkeypatch.setattr(control, "_client", lambda: fake)
    monkeypatch.setattr(serve, "status", lambda: fake.status)
    return fake


def test_scale_changes_one_deployment_in_place_and_waits_for_its_replicas(monkeypatch):
    from molal_ray.serve.control import scale

    fake = _fake_serve(monkeypatch, ready_after=2)
    seconds = scale("annotators", "yi", replicas=3, wait_s=5.0)
    assert seconds > 0 and fake.reads == 3  # polled until three replicas ran, healthy
    (apps,) = fake.applied
    assert {a["name"] for a in apps} == {"annotators", "other"}  # the other declared app is sent again as it was
    deps = {d["name"]: d for d in next(a for a in apps if a["name"] == "annotators")["deployments"]}
    assert deps["qwen"] == {"name": "qwen", "num_replicas": 1}  # the other annotator is untouched
    assert deps["yi"]["num_replicas"] == 3 and deps["yi"].get("autoscaling_config") is None
    assert deps["yi"]["ray_actor_options"] == {"num_cpus": 2}  # its other settings are kept

    fake = _fake_serve(monkeypatch)
    assert scale("annotators", "yi", min_replicas=0, max_replicas=4) == 0.0  # autoscaled: nothing to wait for
    yi = next(d for d in fake.applied[0][0]["deployments"] if d["name"] == "yi")
    assert yi["num_replicas"] == "auto"
    assert yi["autoscaling_config"]["min_replicas"] == 0 and yi["autoscaling_config"]["max_replicas"] == 4
    assert yi["autoscaling_config"]["target_ongoing_requests"] == 4  # the range changes, the policy stays


def test_scale_refuses_what_it_cannot_do_and_says_when_replicas_never_come(monkeypatch):
    import pytest

    from molal_ray.exceptions import AnnotatorError, ConfigError
    from molal_ray.serve.control import scale

    fake = _fake_serve(monkeypatch)
    for kwargs, match in (
        ({}, "one or the other"),
        ({"replicas": 2, "min_replicas": 1}, "one or the other"),
        ({"replicas": 0}, "at least 1"),
        ({"min_replicas": 3, "max_replicas": 2}, "min <= max"),
    ):
        with pytest.raises(ConfigError, match=match):
            scale("annotators", "yi", **kwargs)
    with pytest.raises(ConfigError, match="deployed from Python code"):
        scale("from-code", "yi", replicas=2)
    with pytest.raises(ConfigError, match="no application 'nowhere'"):
        scale("nowhere", "yi", replicas=2)
    with pytest.raises(ConfigError, match=r"expected one of \['qwen', 'yi'\]"):
        scale("annotators", "gpt", replicas=2)
    assert not fake.applied  # nothing was sent for any of these
    fake = _fake_serve(monkeypatch, ready_after=10**9)
    with pytest.raises(AnnotatorError, match="did not reach 3 running replicas"):
        scale("annotators", "yi", replicas=3, wait_s=0.5)


def test_a_replica_that_fits_no_node_is_named_with_what_it_lacks():
    from molal_ray.serve.control import unplaceable

    nodes = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 16.0, "GPU": 1.0, "annotator_slot": 1.0}]
    assert unplaceable({"CPU": 1.0, "GPU": 1.0, "annotator_slot": 1.0}, nodes) is None
    assert unplaceable({"CPU": 0.1, "GPU": 0.0}, nodes) is None
    assert unplaceable({"CPU": 1.0, "GPU": 2.0}, nodes) == "asks for 2 GPU per replica; the largest node has 1 GPU"
    assert unplaceable({"CPU": 32.0}, nodes) == "asks for 32 CPU per replica; the largest node has 16 CPU"
    assert unplaceable({"CPU": 1.0, "TPU": 1.0}, nodes) == "asks for 1 TPU per replica; the largest node has 0 TPU"
    # enough of each somewhere, never together
    split = [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}]
    assert "never all of them on one node" in unplaceable({"CPU": 4.0, "GPU": 1.0}, split)
