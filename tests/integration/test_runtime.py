"""The embedded local runtime is reachable from this machine only."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _app(tmp_path, name: str, recording: str, **resources):  # type: ignore[no-untyped-def]
    """The annotator application of one replay annotator (``resources``: its replica's)."""
    from molal_ray.config import LabelJobConfig
    from tests.conftest import TREC_LABELS

    (tmp_path / "pool.jsonl").write_text('{"id": "a", "text": "b"}\n')
    return LabelJobConfig.from_dict(
        {
            "task": {"labels": TREC_LABELS},
            "annotators": [
                {
                    "name": name,
                    "engine": {"type": "replay", "path": recording},
                    "resources": {"num_cpus": 0.1, **resources},
                }
            ],
            "pool": {"path": str(tmp_path / "pool.jsonl")},
            "output": {"path": str(tmp_path / "out")},
        }
    ).app_config()


def test_the_local_runtime_listens_on_loopback_only_with_token_authentication(ray_local, tmp_path):
    """With the annotator application deployed (Serve's controller, the replicas and their own
    gRPC servers), no process of the local runtime listens beyond 127.0.0.1."""
    import psutil
    from ray._raylet import AuthenticationMode, get_authentication_mode

    from molal_ray.runtime import start_annotators, stop_annotators
    from tests.conftest import TREC

    ray = ray_local

    @ray.remote
    def ping() -> int:
        return 1

    assert ray.get(ping.remote()) == 1  # workers up, so that their servers listen too
    app = _app(tmp_path, "gemma", str(TREC / "recording.parquet"))
    start_annotators(app, "loopback-app")
    try:
        procs = psutil.Process().children(recursive=True)
        listening = []
        for p in procs:
            try:
                listening += [
                    (p.name(), c.laddr) for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
                ]
            except psutil.NoSuchProcess:
                continue
    finally:
        stop_annotators("loopback-app", True, False)
    names = {n for n, _ in listening}
    assert {"gcs_server", "raylet"} <= names, names
    assert any("ServeReplica" in n for n in names), names  # the replicas' own servers were looked at
    assert [(n, a) for n, a in listening if a.ip not in LOOPBACK] == []
    assert get_authentication_mode() == AuthenticationMode.TOKEN


def test_an_annotator_that_cannot_start_names_its_own_error(ray_local, tmp_path):
    """Past the checks before Ray starts (here: called directly), a replica's constructor error
    reaches the user as its own one line, not as 'failed to deploy, see the controller log'."""
    import time

    from molal_ray.exceptions import AnnotatorError
    from molal_ray.runtime import start_annotators, stop_annotators

    app = _app(tmp_path, "ghost", str(tmp_path / "gone.parquet"))
    t0 = time.monotonic()
    with pytest.raises(AnnotatorError) as err:
        start_annotators(app, "ghost-app")
    msg = str(err.value)
    assert "annotator 'ghost' could not start: " in msg and "gone.parquet" in msg, msg
    assert "Traceback" not in msg and len(msg.splitlines()) == 1, msg
    assert time.monotonic() - t0 < 120
    stop_annotators("ghost-app", True, False)


def test_an_annotator_that_asks_for_more_than_any_node_has_is_one_line_not_a_silent_wait(
    ray_local, tmp_path, monkeypatch
):
    """Serve waits for resources that never come (up to the 30-minute deploy timeout); past a
    grace for an autoscaler, the job names the annotator and what it lacks."""
    import time

    import molal_ray.serve.control as control
    from molal_ray.exceptions import AnnotatorError
    from molal_ray.runtime import start_annotators, stop_annotators
    from tests.conftest import TREC

    monkeypatch.setattr(control, "PLACEMENT_GRACE_S", 2.0)
    app = _app(tmp_path, "greedy", str(TREC / "recording.parquet"), num_cpus=64)
    t0 = time.monotonic()
    try:
        with pytest.raises(AnnotatorError) as err:
            start_annotators(app, "greedy-app")
    finally:
        stop_annotators("greedy-app", True, False)
    msg = str(err.value)
    assert "annotator 'greedy' asks for 64 CPU per replica; the largest node has " in msg and len(msg.splitlines()) == 1
    assert time.monotonic() - t0 < 60
