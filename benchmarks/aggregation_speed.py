"""Aggregation speed: 1M samples x 5 annotators x 6 classes (synthetic, a realistic mix of
agreement and systematic confusions), aggregated by the default with 50 gold labels.

Prints wall time of each step (table -> matrix, fit, predict for all rows) and the process's peak
memory. Target: at most 2 minutes on this 2-core machine.

    .venv/bin/python benchmarks/aggregation_speed.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from molal_ray.aggregation import Gold, build_matrix, get_aggregator
from molal_ray.testing.synthetic import synthetic_table


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--method", default="default")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table, truth = synthetic_table(args.n, seed=0)
    t_gen = time.perf_counter() - t0
    mem_gen = peak_mib()
    print(f"synthetic table: {table.num_rows} rows ({table.nbytes / 2**20:.0f} MiB Arrow) in {t_gen:.1f}s; "
          f"peak so far {mem_gen:.0f} MiB")
    t1 = time.perf_counter()
    m = build_matrix(table, 6)
    t_matrix = time.perf_counter() - t1
    gi = np.random.default_rng(0).choice(args.n, 50, replace=False)
    idx = np.asarray([int(s[1:]) for s in m.sample_ids[gi]])
    gold = Gold(gi, truth[idx], 6)
    t2 = time.perf_counter()
    agg = get_aggregator(args.method).fit(m, gold)
    t_fit = time.perf_counter() - t2
    t3 = time.perf_counter()
    p = agg.predict_proba(m)
    t_pred = time.perf_counter() - t3
    total = t_matrix + t_fit + t_pred
    order = np.asarray([int(s[1:]) for s in m.sample_ids])
    acc = float((p.argmax(1) == truth[order]).mean())
    print(f"{'step':<22}{'seconds':>9}")
    for name, t in [("table -> matrix", t_matrix), ("fit", t_fit), ("predict (all rows)", t_pred),
                    ("total aggregation", total)]:
        print(f"{name:<22}{t:>9.1f}")
    print(f"peak memory (whole process, incl. the synthetic table): {peak_mib():.0f} MiB")
    print(f"accuracy vs synthetic truth: {acc:.4f}; target total <= 120 s: {'met' if total <= 120 else 'MISSED'} "
          f"({total / 120:.2f} of the budget)")


if __name__ == "__main__":
    main()
