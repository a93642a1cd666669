"""Does a loop round cost the same on a pool of 10k texts as on one of 1M? Measured side by side.

For each pool size: synthetic texts with a recording of five replay annotators and 2,000 gold
labels (made in a child process), then the MoLLIA loop on a local Ray: 50 gold, 2 rounds of 50
queries (max-entropy on a sub-sample of 2,000), the default aggregator, a tiny BERT classifier
trained on Ray Train. Prints the pool preparation time (once per pool, reused on resume), the
seconds of round 1 and of its phases (query, annotate, aggregate, train, score the test split and
the next round's candidates), the driver's peak RSS and the size of ``state.json``, then the
ratios 1M / 10k.

    .venv/bin/python benchmarks/loop_scale.py                  # 10k and 1M
    .venv/bin/python benchmarks/loop_scale.py --n 10000 100000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks.memory` is imported below
    sys.path.insert(0, str(ROOT))

from benchmarks.memory import MemorySampler  # noqa: E402
from molal_ray.testing.synthetic import SYNTHETIC_ANNOTATORS, SYNTHETIC_LABELS, write_synthetic_pool  # noqa: E402


def loop_config(root: Path, backbone: Path) -> dict:
    return {
        "task": {"labels": SYNTHETIC_LABELS},
        "annotators": [
            {
                "name": a,
                "engine": {"type": "replay", "path": str(root / "recording.parquet")},
                "resources": {"num_cpus": 0.1},
            }
            for a in SYNTHETIC_ANNOTATORS
        ],
        "pool": {"path": str(root / "pool.parquet")},
        "gold": str(root / "gold.parquet"),
        "loop": {
            "initial_gold": 50,
            "rounds": 2,
            "query_size": 50,
            "strategy": "max-entropy",
            "subsample": 2000,
            "test_fraction": 0.25,
            "test_max": 500,
        },
        "classifier": {
            "backbone": str(backbone),
            "epochs": 2,
            "batch_size": 32,
            "learning_rate": 3e-3,
            "max_length": 24,
            "cpus_per_worker": 0.5,
            "threads": 2,
        },
        "output": {"path": str(root / "out"), "mode": "overwrite"},
    }


def run(n: int) -> dict:
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.loop.runner import run_loop
    from molal_ray.pipeline.pool_store import PreparedPool
    from molal_ray.testing.tiny_models import build_tiny_bert

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        maker = multiprocessing.get_context("spawn").Process(
            target=write_synthetic_pool, args=(n, str(root)), kwargs={"gold_rows": 2000}
        )
        maker.start()
        maker.join()
        if maker.exitcode != 0:
            raise RuntimeError(f"making the synthetic data failed (exit code {maker.exitcode})")
        corpus = [
            f"question {i} about {t} and topic {i}?"
            for i, t in enumerate(["weather", "history", "sport", "music", "science", "travel"] * 20)
        ]
        backbone = build_tiny_bert(root / "bert", corpus)
        cfg = LoopJobConfig.from_dict(loop_config(root, backbone))
        sampler = MemorySampler()
        sampler.start()
        t0 = time.monotonic()
        PreparedPool.build(cfg.pool, root / "out" / "pool")  # the loop finds it ready and reuses it
        prepare_s = time.monotonic() - t0
        report = run_loop(cfg)
        sampler.stop.set()
        sampler.join()
        state = json.loads((root / "out" / "state" / "state.json").read_text())
        r1 = state["history"][1]
        return {
            "n": n,
            "prepare_s": prepare_s,
            "round1_s": sum(r1["phase_s"].values()),
            "phases": r1["phase_s"],
            "driver_peak_mib": sampler.driver_peak / 2**20,
            "state_bytes": (root / "out" / "state" / "state.json").stat().st_size,
            "labelled": r1["n_labeled"],
            "test_accuracy": report["rounds"][-1]["test_accuracy"],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[10_000, 1_000_000])
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    results = [run(n) for n in args.n]
    print(f"\n{'N':>8} {'prepare s':>9} {'round 1 s':>10} {'driver MiB':>11} {'state.json B':>13}  round 1 phases (s)")
    for r in results:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
        print(
            f"{r['n']:>8} {r['prepare_s']:>9.1f} {r['round1_s']:>10.1f} {r['driver_peak_mib']:>11.0f} "
            f"{r['state_bytes']:>13}  {phases}"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(
            f"N={b['n']} / N={a['n']}: round 1 x{b['round1_s'] / a['round1_s']:.2f}, "
            f"driver peak x{b['driver_peak_mib'] / a['driver_peak_mib']:.2f}, "
            f"state.json x{b['state_bytes'] / a['state_bytes']:.2f}"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
