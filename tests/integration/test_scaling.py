"""Annotators the operator scales while a job runs: nothing is lost, nothing is written twice."""

from __future__ import annotations

import threading
import time

import pyarrow.parquet as pq
import pytest

from molal_ray.config import LabelJobConfig
from molal_ray.exceptions import ConfigError
from molal_ray.pipeline.label_job import run_label_job
from molal_ray.pipeline.output import read_annotation_table
from molal_ray.serve.control import scale, status
from tests.conftest import TREC, TREC_ANNOTATORS, TREC_LABELS

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_an_annotator_scaled_from_1_to_3_and_back_while_a_job_runs_loses_no_pair(ray_local, tmp_path):
    pool = pq.read_table(TREC / "pool.parquet").slice(0, 600)
    pq.write_table(pool, tmp_path / "pool.parquet")
    annotators = [
        {
            "name": n,
            "engine": {"type": "replay", "path": str(TREC / "recording.parquet")},
            "resources": {"num_cpus": 0.05},
        }
        for n in TREC_ANNOTATORS
    ]
    # yi is the slow one: one batch at a time per replica, 50 ms a text.
    annotators[-1]["engine"]["latency_s_per_text"] = 0.05
    annotators[-1]["resources"]["max_ongoing_requests"] = 1
    cfg = LabelJobConfig.from_dict(
        {
            "task": {"labels": TREC_LABELS},
            "annotators": annotators,
            "pool": {"path": str(tmp_path / "pool.parquet")},
            "output": {"path": str(tmp_path / "out")},
            "pipeline": {"batch_size": 16, "concurrency": 3, "stage_num_cpus": 0.1},
        }
    )
    result: dict = {}

    def job() -> None:
        try:
            result["summary"] = run_label_job(cfg)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            result["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    parts = tmp_path / "out" / "parts"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (parts.exists() and len(list(parts.glob("part-*"))) >= 3):
        time.sleep(0.2)
    assert thread.is_alive(), "the job ended before it could be scaled"
    with pytest.raises(ConfigError, match="expected one of"):
        scale("annotators", "gpt", replicas=2)
    up = scale("annotators", "yi", replicas=3)
    yi = next(s for s in status("annotators") if s.name == "yi")
    assert (yi.running, yi.target) == (3, 3) and up > 0
    assert thread.is_alive(), "the job ended before the scale-up took effect"
    time.sleep(3)
    scale("annotators", "yi", replicas=1)
    yi = next(s for s in status("annotators") if s.name == "yi")
    assert (yi.running, yi.target) == (1, 1)
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    t = read_annotation_table(tmp_path / "out").to_pandas()
    assert len(t) == len(t.drop_duplicates(["sample_id", "annotator"])) == 600 * 5
    assert t["error"].isna().all()
    assert result["summary"].annotators["yi"].rows == 600
