"""A Ray cluster of three nodes on this machine (``ray.cluster_utils.Cluster``): a head and two
workers that each declare one GPU and one ``annotator_slot``, as ``cluster.yaml``'s GPU workers
do. Runs the label job on it, with two annotators asking for a GPU and a slot per replica (as
``serve_configs/annotators-gpu.yaml`` does), then a label job and a two-round loop during each
of which the worker node of one annotator's replica is killed without warning (a spare GPU
node has joined each time, so Serve can place the replica again), and writes what happened to
``OUT/result.json`` for the test to check.

    python -m tests.integration.multinode_scenario OUT BACKBONE

Run in its own process: a process connects to one Ray cluster only, and the test session has
its own.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import TREC, TREC_LABELS

GPU_ANNOTATORS = ["llama", "yi"]
CPU_ANNOTATORS = ["gemma"]
SLOT = "annotator_slot"


def annotators(latency: float = 0.0) -> list[dict]:
    engine = {"type": "replay", "path": str(TREC / "recording.parquet"), "latency_s_per_text": latency}
    out = [
        {"name": n, "engine": engine, "resources": {"num_gpus": 1, "num_cpus": 0.1, "resources": {SLOT: 1}}}
        for n in GPU_ANNOTATORS
    ]
    out += [{"name": n, "engine": engine, "resources": {"num_cpus": 0.1}} for n in CPU_ANNOTATORS]
    return out


def parts_written(parts: Path, at_least: int, deadline: float) -> bool:
    while time.monotonic() < deadline and len(list(parts.glob("part*.parquet"))) < at_least:
        time.sleep(0.05)
    return len(list(parts.glob("part*.parquet"))) >= at_least


def kill_node_of(cluster, annotator: str, parts: Path, result: dict, key: str = "killed", after=None) -> None:
    """Once ``after()`` says so (default: the job has written 3 parts), kill the worker node that
    runs ``annotator``'s replica, at once (its raylet, workers and the replica die without a word)."""
    deadline = time.monotonic() + 120
    if after is None:
        parts_written(parts, 3, deadline)
    else:
        after(deadline)
    (replica,) = placement("annotators")[annotator]
    node = next(n for n in cluster.worker_nodes if n.node_id == replica["node"])
    result[key] = {
        "annotator": annotator,
        "node": replica["node"],
        "parts_before": len(list(parts.glob("part*.parquet"))),
    }
    cluster.remove_node(node, allow_graceful=False)


def in_round_one(loop_out: Path, parts: Path):
    """A trigger for :func:`kill_node_of`: the loop has saved round 0 and written round 1's first
    part (its annotators are still being asked)."""

    def wait(deadline: float) -> None:
        state = loop_out / "state" / "state.json"
        while time.monotonic() < deadline:
            try:
                if json.loads(state.read_text())["round"] >= 1:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        parts_written(parts, len(list(parts.glob("part*.parquet"))) + 1, deadline)

    return wait


def placement(app_name: str) -> dict[str, list[dict]]:
    """Per annotator, the resources of the node each running replica is on."""
    import ray
    from ray.serve.context import _get_global_client

    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    details = _get_global_client().get_serve_details()["applications"][app_name]["deployments"]
    return {
        name: [
            {"node": r["node_id"], "resources": nodes.get(r["node_id"], {})}
            for r in d["replicas"]
            if r["state"] == "RUNNING"
        ]
        for name, d in details.items()
        if name != "AnnotatorsIngress"
    }


def main(out: Path, backbone: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from molal_ray.config import LabelJobConfig
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.exceptions import ConfigError
    from molal_ray.loop.runner import run_loop
    from molal_ray.pipeline.label_job import run_label_job

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2, num_gpus=1, resources={SLOT: 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    result: dict = {"nodes": len([n for n in ray.nodes() if n["Alive"]])}
    try:
        pool = pq.read_table(TREC / "pool.parquet").slice(0, 300)
        pq.write_table(pool, out / "pool.parquet")
        label = {
            "task": {"labels": TREC_LABELS},
            "annotators": annotators(),
            "pool": {"path": str(out / "pool.parquet"), "shared": True, "buckets": 2},
            "output": {"path": str(out / "label")},
            "pipeline": {"batch_size": 32},
            "ray": {"address": cluster.address, "keep_serve_running": True},
        }
        try:  # a plain local output on a cluster of several nodes is refused, naming the fix
            run_label_job(LabelJobConfig.from_dict(label))
            result["local_output_refused"] = None
        except ConfigError as exc:
            result["local_output_refused"] = str(exc)
        label["output"]["shared"] = True
        summary = run_label_job(LabelJobConfig.from_dict(label))
        result["label_rows"] = summary.table_rows
        result["placement"] = placement("annotators")

        # A worker node lost in the middle of a label job (annotators slowed down so that the
        # job is still running when it goes); a spare GPU node has joined.
        from ray import serve

        serve.delete("annotators")  # the application the first job kept answers without the delay
        cluster.add_node(num_cpus=2, num_gpus=1, resources={SLOT: 1})
        cluster.wait_for_nodes()
        fault = {
            **label,
            "annotators": annotators(latency=0.01),
            "output": {"path": str(out / "fault"), "shared": True},
            "pipeline": {"batch_size": 16, "max_retries": 10, "retry_backoff_s": 0.5},
            "ray": {"address": cluster.address},
        }
        killer = threading.Thread(target=kill_node_of, args=(cluster, "llama", out / "fault" / "parts", result))
        killer.start()
        t0 = time.monotonic()
        summary = run_label_job(LabelJobConfig.from_dict(fault))
        killer.join()
        result["fault"] = {
            "table_rows": summary.table_rows,
            "errors": summary.errors_by_kind,
            "seconds": round(time.monotonic() - t0, 1),
        }
        # A worker node lost while a loop round asks its annotators (slowed down, in small
        # batches); another spare GPU node has joined.
        cluster.add_node(num_cpus=2, num_gpus=1, resources={SLOT: 1})
        cluster.wait_for_nodes()
        loop = {
            "task": {"labels": TREC_LABELS},
            "annotators": annotators(latency=0.1),
            "pool": {"path": str(out / "pool.parquet"), "shared": True},
            "gold": str(TREC / "gold.csv"),
            "loop": {
                "initial_gold": 20,
                "rounds": 2,
                "query_size": 20,
                "strategy": "max-entropy",
                "subsample": 120,
                "test_fraction": 0.25,
                "test_max": 60,
            },
            "classifier": {
                "backbone": backbone,
                "epochs": 2,
                "batch_size": 16,
                "learning_rate": 3e-3,
                "cpus_per_worker": 0.5,
            },
            "output": {"path": str(out / "loop"), "shared": True},
            "pipeline": {"batch_size": 4, "max_retries": 10, "retry_backoff_s": 0.5},
            "ray": {"address": cluster.address},
        }
        loop_parts = out / "loop" / "annotations" / "parts"
        killer = threading.Thread(
            target=kill_node_of,
            args=(cluster, "yi", loop_parts, result, "killed_in_loop", in_round_one(out / "loop", loop_parts)),
        )
        killer.start()
        report = run_loop(LoopJobConfig.from_dict(loop))
        killer.join()
        result["loop_labelled"] = [r["n_labeled"] for r in report["rounds"]]
        result["loop_parts"] = len(list(loop_parts.glob("part*.parquet")))
    finally:
        ray.shutdown()
        cluster.shutdown()
    (out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
