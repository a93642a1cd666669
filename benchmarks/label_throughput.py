"""Label-pipeline throughput: N synthetic rows through 5 replay annotators on a local Ray.

Prints, per N: wall time, rows/s (annotation rows = N x 5) and texts/s, peak memory of the
driver (during the run, the synthetic data made before it included) and of all Ray processes
together (sampled every 0.2 s). Replay engines answer at once,
so this measures the pipeline itself (reading, Serve calls, Parquet parts), not a model.

    .venv/bin/python benchmarks/label_throughput.py            # N = 10k and 100k
    .venv/bin/python benchmarks/label_throughput.py --n 10000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from molal_ray.config import LabelJobConfig
from molal_ray.engines.recording import RECORDING_SCHEMA
from molal_ray.pipeline.label_job import run_label_job

LABELS = ["a", "b", "c", "d", "e", "f"]
ANNOTATORS = ["m1", "m2", "m3", "m4", "m5"]


def make_data(n: int, root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ids = [f"s{i:08d}" for i in range(n)]
    texts = [f"synthetic question number {i} about topic {i % 97}?" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "text": texts}), root / "pool.parquet", row_group_size=50_000)
    truth = rng.integers(0, len(LABELS), n)
    sid, ann, probs, samples = [], [], [], []
    for a in ANNOTATORS:
        p = rng.dirichlet(np.ones(len(LABELS)) * 0.3, n)
        p[np.arange(n), truth] += 1.0
        p /= p.sum(1, keepdims=True)
        draws = (p.cumsum(1)[:, None, :] > rng.random((n, 10, 1))).argmax(-1)
        sid += ids
        ann += [a] * n
        probs += p.tolist()
        samples += [[LABELS[k] for k in row] for row in draws]
    pq.write_table(pa.table({"sample_id": sid, "annotator": ann, "label_probs": probs, "samples": samples},
                            schema=RECORDING_SCHEMA), root / "recording.parquet")


class MemorySampler(threading.Thread):
    """Peak summed RSS of this process and every Ray process."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.driver_peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            for p in psutil.process_iter(["name", "cmdline", "memory_info"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if p.pid == psutil.Process().pid or "ray" in (p.info["name"] or "") or "ray::" in cmd \
                            or "raylet" in cmd or "gcs_server" in cmd or "ray/_private" in cmd:
                        total += p.info["memory_info"].rss
                except (psutil.NoSuchProcess, TypeError):
                    continue
            self.peak = max(self.peak, total)
            self.driver_peak = max(self.driver_peak, psutil.Process().memory_info().rss)
            time.sleep(0.2)


def run(n: int, batch_size: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_data(n, root)
        cfg = LabelJobConfig.from_dict({
            "task": {"labels": LABELS},
            "annotators": [{"name": a, "engine": {"type": "replay", "path": str(root / "recording.parquet")},
                            "resources": {"num_cpus": 0.1}} for a in ANNOTATORS],
            "pool": {"path": str(root / "pool.parquet")},
            "output": {"path": str(root / "out"), "mode": "overwrite"},
            "pipeline": {"batch_size": batch_size, "concurrency": concurrency},
        })
        sampler = MemorySampler()
        sampler.start()
        t0 = time.monotonic()
        summary = run_label_job(cfg)
        wall = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
        assert summary.table_rows == n * len(ANNOTATORS), summary
        return {"n": n, "wall_s": wall, "rows_per_s": summary.table_rows / wall, "texts_per_s": n / wall,
                "driver_peak_mib": sampler.driver_peak / 2**20,
                "ray_peak_mib": sampler.peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    results = [run(n, args.batch_size, args.concurrency) for n in args.n]
    print(f"\n{'N':>8} {'wall s':>8} {'rows/s':>9} {'texts/s':>9} {'driver MiB':>11} {'all Ray MiB':>12}")
    for r in results:
        print(f"{r['n']:>8} {r['wall_s']:>8.1f} {r['rows_per_s']:>9.0f} {r['texts_per_s']:>9.0f} "
              f"{r['driver_peak_mib']:>11.0f} {r['ray_peak_mib']:>12.0f}")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"rows/s ratio N={b['n']} / N={a['n']}: {b['rows_per_s'] / a['rows_per_s']:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
