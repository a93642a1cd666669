"""Several nodes: a head and two GPU workers (ray.cluster_utils.Cluster, in a process of its own;
see multinode_scenario.py). Annotator replicas land where their resources are; the label job and
a two-round loop run end to end; every (sample, annotator) pair is written once, also by a label
job and a loop during which a worker node running an annotator's replica is killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from molal_ray.pipeline.output import read_annotation_table
from tests.conftest import ROOT, TREC, recorded_answers

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_annotators_land_on_gpu_nodes_and_jobs_run_across_nodes(tmp_path):
    from molal_ray.testing.tiny_models import build_tiny_bert

    texts = pq.read_table(TREC / "pool.parquet").slice(0, 300).column("text").to_pylist()
    backbone = build_tiny_bert(tmp_path / "bert", texts)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(
        [sys.executable, "-m", "tests.integration.multinode_scenario", str(tmp_path), str(backbone)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["nodes"] == 3
    refused = result["local_output_refused"]
    assert refused and "output.path" in refused and "3 nodes" in refused and "output.shared: true" in refused
    nodes_used = []
    for name in ("llama", "yi"):  # one GPU and one annotator slot per replica
        (replica,) = result["placement"][name]
        assert replica["resources"].get("GPU") == 1 and replica["resources"].get("annotator_slot") == 1
        nodes_used.append(replica["node"])
    assert len(set(nodes_used)) == 2  # one GPU per node: the two replicas cannot share one
    assert result["placement"]["gemma"]  # asks no GPU: runs anywhere
    t = read_annotation_table(tmp_path / "label").to_pandas()
    assert len(t) == len(t.drop_duplicates(["sample_id", "annotator"])) == 300 * 3 == result["label_rows"]
    assert t["error"].isna().all()
    # The node killed mid-job: its replica came back on the spare node and the retried calls were
    # answered; the table holds every pair once, each what the recording says, nothing flagged.
    assert result["killed"]["annotator"] == "llama" and result["killed"]["parts_before"] >= 3
    assert result["fault"]["errors"] == {}
    fault = read_annotation_table(tmp_path / "fault").to_pylist()
    got = {(r["sample_id"], r["annotator"]): r for r in fault}
    ids = pq.read_table(tmp_path / "pool.parquet").column("id").to_pylist()
    expected = {k: v for k, v in recorded_answers(ids).items() if k[1] in ("llama", "yi", "gemma")}
    assert set(got) == set(expected) and len(fault) == 300 * 3 == result["fault"]["table_rows"]
    for key, (_probs, votes, n_invalid) in expected.items():
        row = got[key]
        assert row["error"] is None and row["n_invalid"] == n_invalid
        assert max(abs(a - b) for a, b in zip(row["votes"], votes)) < 1e-6
    # The node of yi's replica killed while round 1 asked the annotators: the loop ran to the end,
    # its table holds every pair of its 60 rows once, each the recording's, nothing flagged.
    assert result["killed_in_loop"]["annotator"] == "yi"
    assert result["killed_in_loop"]["parts_before"] < result["loop_parts"]  # the loop wrote on after it
    assert result["loop_labelled"] == [20, 40, 60]
    loop = read_annotation_table(tmp_path / "loop" / "annotations").to_pylist()
    got = {(r["sample_id"], r["annotator"]): r for r in loop}
    assert len(got) == len(loop) == 60 * 3
    expected = recorded_answers(sorted({k[0] for k in got}))
    for key, row in got.items():
        _probs, votes, n_invalid = expected[key]
        assert row["error"] is None and row["n_invalid"] == n_invalid
        assert max(abs(a - b) for a, b in zip(row["votes"], votes)) < 1e-6
