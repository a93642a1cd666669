"""Ablation of the default aggregator's settings on TREC, on development seeds.

The default's settings (self-training threshold, final regularisation, weight of gold rows in
Dawid-Skene) are compared here on seeds that `aggregation_quality.py` does not report (100 and
up by default), so that what is reported there is not tuned on its own evaluation rows. Each
seed draws 50 random gold labels; accuracy is measured on all other rows. Calibration is off
(it does not change labels) to keep the run short.

    .venv/bin/python benchmarks/aggregation_ablation.py [--seeds 6] [--first-seed 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.aggregation_quality import LABELS, trec_table  # noqa: E402
from molal_ray.aggregation import Gold, build_matrix, get_aggregator  # noqa: E402
from molal_ray.aggregation.pooled import PooledAggregator  # noqa: E402

VARIANTS: dict[str, dict] = {
    "default": {},
    "threshold=0.5": {"threshold": 0.5},
    "threshold=0.9": {"threshold": 0.9},
    "threshold=1.01 (no self-training)": {"threshold": 1.01},
    "final_c=0.1": {"final_c": 0.1},
    "gold_weight=5": {"gold_weight": 5.0},
    "gold_weight=80": {"gold_weight": 80.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--gold", type=int, default=50)
    args = ap.parse_args()
    table, gold_s = trec_table()
    m = build_matrix(table, len(LABELS))
    y = np.array([LABELS.index(gold_s[s]) for s in m.sample_ids])
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    acc: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        gi = np.random.default_rng(seed).choice(len(m), args.gold, replace=False)
        gold = Gold(gi, y[gi], len(LABELS))
        ev = np.ones(len(m), bool)
        ev[gi] = False
        runs = {name: PooledAggregator(seed=seed, calibrate=False, **kw) for name, kw in VARIANTS.items()}
        runs["dawid-skene alone"] = get_aggregator("dawid-skene", seed=seed)
        runs["majority"] = get_aggregator("majority", seed=seed)
        for name, agg in runs.items():
            p = agg.fit(m, gold).predict_proba(m)
            acc.setdefault(name, []).append(float((p.argmax(1)[ev] == y[ev]).mean()))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    base = np.array(acc["default"])
    print(f"\nTREC, {args.gold} random gold, accuracy on the other rows, seeds {seeds[0]}..{seeds[-1]}")
    print(f"{'variant':<36}{'mean':>8}{'min':>8}{'vs default':>12}{'wins':>6}")
    for name, v in acc.items():
        d = np.array(v) - base
        print(f"{name:<36}{np.mean(v):>8.4f}{np.min(v):>8.4f}{np.mean(d):>+12.4f}{int((d > 0).sum()):>4}/{len(v)}")


if __name__ == "__main__":
    main()
