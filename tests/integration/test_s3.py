"""Everything on object storage: a real S3 endpoint (moto's server) started by the tests on
127.0.0.1. Pool, recording, gold, label output, loop state and Ray Train checkpoints all live at
``s3://`` URIs; the results equal those of the same jobs on a local disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from molal_ray.config.loop import LoopJobConfig
from molal_ray.loop.runner import run_loop
from molal_ray.loop.state import LoopState
from molal_ray.pipeline.output import read_annotation_table
from molal_ray.storage import resolve
from tests.conftest import (
    ROOT,
    TREC,
    TREC_ANNOTATORS,
    TREC_LABELS,
    assert_rows_are_the_recordings,
    replay_label_config,
    table_pairs,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("s3data")
    pool = pq.read_table(TREC / "pool.parquet").slice(0, 300)
    pq.write_table(pool, root / "pool.parquet")
    bucket = s3.bucket("molal-test")
    return {
        "root": root,
        "bucket": bucket,
        "pool": s3.upload(root / "pool.parquet", bucket, "in/pool.parquet"),
        "recording": s3.upload(TREC / "recording.parquet", bucket, "in/recording.parquet"),
        "gold": s3.upload(TREC / "gold.csv", bucket, "in/gold.csv"),
    }


def _label_cfg(pool: str, recording: str, out: str, latency: float = 0.0, in_flight: int = 4) -> dict:
    return replay_label_config(pool, out, recording=recording, latency=latency, buckets=3, in_flight=in_flight)


def test_a_label_job_whose_object_store_stops_ends_with_one_clear_line_and_resumes_once_it_is_back(tmp_path):
    """The S3 endpoint of the output becomes unreachable in the middle of a label job: the job
    ends at once with one ``error:`` line naming the storage, exit code 2, no traceback. Once
    the endpoint is back (the server kept its data), the same command finishes the job: every
    pair once, each the recording's."""
    from tests.integration.conftest import MotoServer, S3Endpoint, TcpGate

    own = MotoServer()  # this test's own server: the way to it is cut part-way
    gate = TcpGate(own.port)
    try:
        endpoint = S3Endpoint(gate.port)
        pool = tmp_path / "pool.parquet"
        pq.write_table(pq.read_table(TREC / "pool.parquet").slice(0, 300), pool)
        out = endpoint.uri(endpoint.bucket("stops"), "label")
        cfg = tmp_path / "label.yaml"
        cfg.write_text(yaml.safe_dump(replay_label_config(pool, out, latency=0.05, in_flight=1)))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "molal_ray.cli", "label", str(cfg)]
        proc = subprocess.Popen(
            cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        parts = resolve(out).join("parts")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and len(parts.list(prefix="part-")) < 3:
            time.sleep(0.2)
        assert proc.poll() is None, "the run finished before the storage could stop"
        gate.cut()
        try:
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1, err[-3000:]
        assert "storage: could not" in errors[0] and "s3://stops/label" in errors[0], errors[0]
        assert "Traceback" not in err and "Failed to apply UDF" not in err, err[-3000:]
        assert "core_worker.cc" not in err, err[-3000:]  # Ray's C++ notices stay off the terminal

        gate.restore()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert_rows_are_the_recordings(table_pairs(out), pq.read_table(pool)["id"].to_pylist())
    finally:
        gate.cut()
        own.stop()


def test_a_killed_label_job_on_s3_resumes_to_the_rows_of_an_uninterrupted_one(ray_local, s3, data, tmp_path):
    out = s3.uri(data["bucket"], "label-killed")
    cfg = tmp_path / "label.yaml"
    cfg.write_text(yaml.safe_dump(_label_cfg(data["pool"], data["recording"], out, latency=0.05, in_flight=1)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "molal_ray.cli", "label", str(cfg)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = resolve(out).join("parts")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(parts.list(prefix="part-")) >= 8:
            break
        time.sleep(0.3)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(read_annotation_table(out))
    assert 0 < partial < 1500
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_rows_are_the_recordings(  # every pair once, each the recording's: what a local run writes
        table_pairs(out), pq.read_table(data["root"] / "pool.parquet").column("id").to_pylist()
    )
    assert json.loads(resolve(out).join("summary.json").read_text())["table_rows"] == 1500
    names = [i.base_name for i in resolve(out).join("parts").list()]
    assert names and all(n.startswith(("part-b", "data-b")) for n in names)  # nothing left half-written
    assert resolve(out).join("pool", "_manifest.json").exists()


def test_a_loop_on_s3_matches_the_local_one(ray_local, s3, data, tmp_path):
    from molal_ray.testing.tiny_models import build_tiny_bert

    backbone = build_tiny_bert(
        tmp_path / "bert", pq.read_table(data["root"] / "pool.parquet").column("text").to_pylist()
    )

    def cfg(pool, recording, gold, out):
        return LoopJobConfig.from_dict(
            {
                "task": {"labels": TREC_LABELS},
                "annotators": [
                    {"name": n, "engine": {"type": "replay", "path": recording}, "resources": {"num_cpus": 0.1}}
                    for n in TREC_ANNOTATORS
                ],
                "pool": {"path": pool},
                "gold": gold,
                "loop": {
                    "initial_gold": 20,
                    "rounds": 1,
                    "query_size": 20,
                    "strategy": "max-entropy",
                    "subsample": 120,
                    "test_fraction": 0.25,
                    "test_max": 60,
                },
                "classifier": {
                    "backbone": str(backbone),
                    "epochs": 2,
                    "batch_size": 16,
                    "learning_rate": 3e-3,
                    "cpus_per_worker": 0.5,
                },
                "output": {"path": out},
            }
        )

    out = s3.uri(data["bucket"], "loop")
    remote = run_loop(cfg(data["pool"], data["recording"], data["gold"], out))
    local = run_loop(
        cfg(
            str(data["root"] / "pool.parquet"),
            str(TREC / "recording.parquet"),
            str(TREC / "gold.csv"),
            str(tmp_path / "loop"),
        )
    )
    assert [r["n_labeled"] for r in remote["rounds"]] == [20, 40]  # round 1 scored with round 0's model from S3
    a, b = LoopState.load(resolve(out).join("state")), LoopState.load(tmp_path / "loop" / "state")
    assert [(x.sample_id, x.label, x.weight) for x in a.labeled] == [
        (x.sample_id, x.label, x.weight) for x in b.labeled
    ]
    assert [r["test_accuracy"] for r in remote["rounds"]] == pytest.approx(
        [r["test_accuracy"] for r in local["rounds"]]
    )
    assert all(h["model_dir"].startswith("s3://") for h in a.history)  # checkpoints on the object store
    assert json.loads(resolve(out).join("report.json").read_text())["rounds"] == remote["rounds"]
    t = read_annotation_table(resolve(out).join("annotations")).to_pandas()
    assert len(t) == len(t.drop_duplicates(["sample_id", "annotator"])) == 40 * 5


def test_an_output_on_s3_is_locked_while_a_job_writes_it(s3, data, caplog):
    """The lock beside an s3:// output: a second job refuses with who holds it; a lock whose
    heartbeat stopped is taken over with a warning (on object storage there is no process to
    ask, only the heartbeat)."""
    import logging

    from molal_ray.lock import OutputLock, OutputLocked, lock_location

    out = s3.uri(data["bucket"], "locked")
    with OutputLock(out, "label"):
        assert lock_location(resolve(out)).exists()
        with pytest.raises(OutputLocked, match=r"in use by `molal-ray label` \(process \d+ on .*\) since"):
            OutputLock(out, "run").acquire()
    assert not lock_location(resolve(out)).exists()  # released
    stuck = OutputLock(out, "label", heartbeat_s=3600).acquire()  # a holder whose heartbeat stops
    time.sleep(1.5)
    with caplog.at_level(logging.WARNING, logger="molal_ray"):
        with OutputLock(out, "run", stale_s=1.0):
            assert json.loads(lock_location(resolve(out)).read_bytes())["command"] == "run"
    assert any("taking over" in r.message and "heartbeat" in r.message for r in caplog.records)
    stuck.release()  # it no longer holds the lock: nothing of the new holder's is removed
