"""Real job submission: a Ray head started with `ray start` (its own ports and temp dir, token
authentication on; ``RayHead`` says where it listens), the annotators deployed by the operator,
jobs submitted with `ray job submit --working-dir .`, one stopped part-way with `ray job stop`
and submitted again. These are the README's cluster commands."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from molal_ray.pipeline.output import read_annotation_table
from molal_ray.testing.ray_head import RayHead
from tests.conftest import ROOT, TREC, assert_rows_are_the_recordings, replay_label_config, table_pairs

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """One head for the module's tests (its start and stop cost about 10 s here); after its stop,
    none of its processes may be left running."""
    h = RayHead(tmp_path_factory.mktemp("head"), cwd=ROOT)
    running = []
    try:
        h.start()
        yield h
        running = h.processes()  # the head's own, its agents, the client server, the jobs' workers
    finally:
        h.stop()
    stray = [p.pid for p in running if _alive(p)]
    assert not stray, f"the head's stop left its processes {stray} running"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE  # is_running: not a reused pid
    except psutil.NoSuchProcess:
        return False


def _label_config(tmp: Path, out: Path, latency: float, in_flight: int = 4) -> Path:
    pool = pq.read_table(TREC / "pool.parquet").slice(0, 400)
    pq.write_table(pool, tmp / "pool.parquet")
    cfg = replay_label_config(tmp / "pool.parquet", out, latency=latency, in_flight=in_flight)
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_jobs_submitted_to_a_ray_head_use_the_operators_annotators(head, tmp_path):
    # The operator deploys the annotators (with the job's task: the fingerprints match).
    cfg = _label_config(tmp_path, tmp_path / "label-a", latency=0.0)
    head.molal("annotators", "deploy", str(cfg))
    head.submit("label-a", "python", "jobs/label.py", str(cfg))
    assert head.wait("label-a") == "SUCCEEDED", head.logs("label-a")
    assert len(table_pairs(tmp_path / "label-a")) == 400 * 5
    assert "gemma" in head.molal("annotators", "status").stdout  # the job left the operator's app running

    # A job whose task differs is refused, with the difference named.
    bad = yaml.safe_load(cfg.read_text())
    bad["annotators"][0]["sampling"] = {"temperature": 0.2}
    bad["output"]["path"] = str(tmp_path / "label-bad")
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(yaml.safe_dump(bad))
    head.submit("label-bad", "python", "jobs/label.py", str(bad_cfg))
    assert head.wait("label-bad") == "FAILED"
    assert "sampling.temperature: 0.2 in the job, 0.7 running" in head.logs("label-bad")

    # The loop as a job, on the same annotators.
    from molal_ray.testing.tiny_models import build_tiny_bert

    backbone = build_tiny_bert(tmp_path / "bert", pq.read_table(tmp_path / "pool.parquet").column("text").to_pylist())
    loop = {
        **yaml.safe_load(cfg.read_text()),
        "gold": str(TREC / "gold.csv"),
        "loop": {
            "initial_gold": 20,
            "rounds": 1,
            "query_size": 20,
            "strategy": "random",
            "test_fraction": 0.25,
            "test_max": 60,
        },
        "classifier": {"backbone": str(backbone), "epochs": 1, "batch_size": 16, "cpus_per_worker": 0.5},
        "output": {"path": str(tmp_path / "loop")},
    }
    loop.pop("pipeline")
    loop_cfg = tmp_path / "loop.yaml"
    loop_cfg.write_text(yaml.safe_dump(loop))
    head.submit("loop", "python", "jobs/run.py", str(loop_cfg))
    assert head.wait("loop") == "SUCCEEDED", head.logs("loop")
    report = json.loads((tmp_path / "loop" / "report.json").read_text())
    assert [r["n_labeled"] for r in report["rounds"]] == [20, 40]


def test_a_job_stopped_part_way_and_submitted_again_writes_each_pair_once(head, tmp_path):
    # The operator's application of another test may still run (a job with another task would be
    # refused): deleted first, so that this job deploys its own.
    head.molal("annotators", "delete")
    cfg = _label_config(tmp_path, tmp_path / "stopped", latency=0.05, in_flight=1)
    head.submit("stopped-1", "python", "jobs/label.py", str(cfg))
    parts = tmp_path / "stopped" / "parts"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if parts.exists() and len(list(parts.glob("part-*.parquet"))) >= 4:
            break
        time.sleep(0.5)
    head.ray("job", "stop", "stopped-1")
    assert head.wait("stopped-1") == "STOPPED"
    partial = len(read_annotation_table(tmp_path / "stopped"))
    assert 0 < partial < 400 * 5
    head.submit("stopped-2", "python", "jobs/label.py", str(cfg))
    assert head.wait("stopped-2") == "SUCCEEDED", head.logs("stopped-2")
    # Every pair once, each what the recording says (what an uninterrupted run writes).
    assert_rows_are_the_recordings(
        table_pairs(tmp_path / "stopped"), pq.read_table(tmp_path / "pool.parquet").column("id").to_pylist()
    )
