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
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks.memory` is imported below
    sys.path.insert(0, str(ROOT))

from benchmarks.memory import MemorySampler  # noqa: E402
from molal_ray.config import LabelJobConfig  # noqa: E402
from molal_ray.pipeline.label_job import run_label_job  # noqa: E402
from molal_ray.testing.synthetic import SYNTHETIC_ANNOTATORS as ANNOTATORS  # noqa: E402
from molal_ray.testing.synthetic import SYNTHETIC_LABELS as LABELS  # noqa: E402
from molal_ray.testing.synthetic import write_synthetic_pool  # noqa: E402


def run(n: int, batch_size: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        maker = multiprocessing.get_context("spawn").Process(target=write_synthetic_pool, args=(n, str(root)))
        maker.start()
        maker.join()
        if maker.exitcode != 0:
            raise RuntimeError(f"making the synthetic data failed (exit code {maker.exitcode})")
        cfg = LabelJobConfig.from_dict(
            {
                "task": {"labels": LABELS},
                "annotators": [
                    {
                        "name": a,
                        "engine": {"type": "replay", "path": str(root / "recording.parquet")},
                        "resources": {"num_cpus": 0.1},
                    }
                    for a in ANNOTATORS
                ],
                "pool": {"path": str(root / "pool.parquet")},
                "output": {"path": str(root / "out"), "mode": "overwrite"},
                "pipeline": {"batch_size": batch_size, "concurrency": concurrency},
            }
        )
        sampler = MemorySampler()
        sampler.start()
        t0 = time.monotonic()
        summary = run_label_job(cfg)
        wall = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
        assert summary.table_rows == n * len(ANNOTATORS), summary
        return {
            "n": n,
            "wall_s": wall,
            "rows_per_s": summary.table_rows / wall,
            "texts_per_s": n / wall,
            "driver_peak_mib": sampler.driver_peak / 2**20,
            "all_pss_mib": sampler.peak_pss / 2**20,
            "all_rss_mib": sampler.peak_rss / 2**20,
        }


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
    print(
        f"\n{'N':>8} {'wall s':>8} {'rows/s':>9} {'texts/s':>9} {'driver MiB':>11} {'all PSS MiB':>12} "
        f"{'all RSS MiB':>12}"
    )
    for r in results:
        print(
            f"{r['n']:>8} {r['wall_s']:>8.1f} {r['rows_per_s']:>9.0f} {r['texts_per_s']:>9.0f} "
            f"{r['driver_peak_mib']:>11.0f} {r['all_pss_mib']:>12.0f} {r['all_rss_mib']:>12.0f}"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(
            f"N={b['n']} / N={a['n']}: rows/s x{b['rows_per_s'] / a['rows_per_s']:.2f}, "
            f"driver peak x{b['driver_peak_mib'] / a['driver_peak_mib']:.2f}, "
            f"all PSS x{b['all_pss_mib'] / a['all_pss_mib']:.2f}"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
