"""Scaling a slow annotator: the label job's texts/s with it at 1, 2 and 3 replicas, side by side,
and the time from `scale` to the new replicas answering, on a local Ray.

The slow annotator is a replay engine with a simulated model time (``--latency`` seconds per text)
spent on one batch after another per replica (``latency_serial``), as one model on one GPU does;
the pipeline keeps ``--in-flight`` batches in flight, so at N replicas N batches run at once. The
other four annotators answer at once. Then a job is started at 1
replica and scaled to 3 while it runs: the seconds until Serve reports 3 running replicas, and
until all 3 have answered rows.

    .venv/bin/python benchmarks/scale_annotators.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from molal_ray.config import LabelJobConfig  # noqa: E402
from molal_ray.pipeline.label_job import run_label_job  # noqa: E402

TREC = ROOT / "examples" / "trec"
LABELS = ["abbreviation", "entity", "description", "human", "location", "numeric"]
ANNOTATORS = ["gemma", "llama", "mistral", "qwen", "yi"]


def config(root: Path, latency: float, replicas: int, in_flight: int, batch: int) -> LabelJobConfig:
    annotators = [
        {
            "name": a,
            "engine": {"type": "replay", "path": str(TREC / "recording.parquet")},
            "resources": {"num_cpus": 0.05},
        }
        for a in ANNOTATORS
    ]
    annotators[-1]["engine"].update(latency_s_per_text=latency, latency_serial=True)
    annotators[-1]["resources"].update(num_replicas=replicas)
    return LabelJobConfig.from_dict(
        {
            "task": {"labels": LABELS},
            "annotators": annotators,
            "pool": {"path": str(root / "pool.parquet")},
            "output": {"path": str(root / f"out-{replicas}-{time.monotonic_ns()}"), "mode": "overwrite"},
            "pipeline": {"batch_size": batch, "concurrency": 1, "in_flight": in_flight, "stage_num_cpus": 0.1},
        }
    )


def scale_while_running(cfg: LabelJobConfig) -> tuple[float, float]:
    """Seconds from `scale yi --replicas 3` to 3 running replicas, and to 3 batches in flight on
    them (every replica answering)."""
    from molal_ray.serve.control import scale, status

    def yi() -> object | None:
        try:
            return next((s for s in status("annotators") if s.name == "yi"), None)
        except Exception:  # noqa: BLE001 - not deployed yet, or already deleted
            return None

    thread = threading.Thread(target=run_label_job, args=(cfg,))
    thread.start()
    while (s := yi()) is None or not s.rows:  # type: ignore[attr-defined]
        time.sleep(0.2)
    t0 = time.monotonic()
    running = scale("annotators", "yi", replicas=3)
    answering = float("nan")
    while thread.is_alive():
        s = yi()
        if s is not None and s.running == 3 and (s.ongoing_requests or 0) >= 3:  # type: ignore[attr-defined]
            answering = time.monotonic() - t0
            break
        time.sleep(0.2)
    thread.join()
    return running, answering


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="texts in the pool (from the TREC example)")
    ap.add_argument("--latency", type=float, default=0.02, help="simulated seconds per text of the slow annotator")
    ap.add_argument("--in-flight", type=int, default=9, help="batches in flight (one annotate actor)")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pq.write_table(pq.read_table(TREC / "pool.parquet").slice(0, args.n), root / "pool.parquet")
        rates = {}
        for r in (1, 2, 3):
            s = run_label_job(config(root, args.latency, r, args.in_flight, args.batch))
            rates[r] = args.n / s.annotate_s  # the annotation phase (not preparing or deploying)
        running, answering = scale_while_running(config(root, args.latency, 1, args.in_flight, args.batch))
    print(
        f"\nslow annotator: {args.latency * 1000:.0f} ms a text, one batch after another per replica; "
        f"{args.n} texts, batches of {args.batch}, {args.in_flight} in flight"
    )
    print(f"{'replicas':>8} {'texts/s':>9} {'x 1 replica':>12}")
    for r, v in rates.items():
        print(f"{r:>8} {v:>9.1f} {v / rates[1]:>12.2f}")
    print(f"scale 1 -> 3 while a job runs: 3 replicas running after {running:.1f}s, all 3 busy after {answering:.1f}s")
    ray.shutdown()


if __name__ == "__main__":
    main()
