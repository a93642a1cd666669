"""Aggregation speed: 1M samples x 5 annotators x 6 classes (synthetic, a realistic mix of
agreement and systematic confusions), aggregated by the default with 50 gold labels, with the
texts' embeddings (synthetic, ``--text-dim`` wide: 1152 is MiniLM with ``--first-tokens 2``) and
without them (``--text-dim 0``: the answers alone, what the default is without embeddings).

Prints wall time of each step (table -> matrix, fit, predict for all rows) and the process's peak
memory. Target: at most 2 minutes on this 2-core machine. Computing real embeddings is reported
apart (`molal-ray aggregate --pool` prints it; MiniLM took about 25 s for TREC's 5,452 questions).

    .venv/bin/python benchmarks/aggregation_speed.py [--n 1000000] [--text-dim 1152]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from molal_ray.aggregation import Gold, build_matrix, get_aggregator
from molal_ray.testing.synthetic import synthetic_embeddings, synthetic_table


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--method", default="default")
    ap.add_argument("--text-dim", type=int, default=1152, help="width of the synthetic embeddings (0: none)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table, truth = synthetic_table(args.n, seed=0)
    t_gen = time.perf_counter() - t0
    mem_gen = peak_mib()
    print(
        f"synthetic table: {table.num_rows} rows ({table.nbytes / 2**20:.0f} MiB Arrow) in {t_gen:.1f}s; "
        f"peak so far {mem_gen:.0f} MiB"
    )
    t1 = time.perf_counter()
    m = build_matrix(table, 6)
    t_matrix = time.perf_counter() - t1
    t_text = 0.0
    if args.text_dim:
        t4 = time.perf_counter()
        order = np.asarray([int(s[1:]) for s in m.sample_ids])
        E = np.empty((args.n, args.text_dim), np.float32)
        for start in range(0, args.n, 100_000):  # in chunks: the generator works in float64
            E[start : start + 100_000] = synthetic_embeddings(
                truth[order[start : start + 100_000]], args.text_dim, noise=1.5, noise_seed=start
            )
        t_gen_text = time.perf_counter() - t4
        t5 = time.perf_counter()
        m = m.with_embeddings(m.sample_ids, E)
        del E
        t_text = time.perf_counter() - t5
        print(
            f"synthetic embeddings: {args.n} x {args.text_dim} ({args.n * args.text_dim * 4 / 2**30:.1f} GiB) in "
            f"{t_gen_text:.1f}s; peak so far {peak_mib():.0f} MiB"
        )
    gi = np.random.default_rng(0).choice(args.n, 50, replace=False)
    idx = np.asarray([int(s[1:]) for s in m.sample_ids[gi]])
    gold = Gold(gi, truth[idx], 6)
    t2 = time.perf_counter()
    agg = get_aggregator(args.method).fit(m, gold)
    t_fit = time.perf_counter() - t2
    t3 = time.perf_counter()
    p = agg.predict_proba(m)
    t_pred = time.perf_counter() - t3
    total = t_matrix + t_text + t_fit + t_pred
    order = np.asarray([int(s[1:]) for s in m.sample_ids])
    acc = float((p.argmax(1) == truth[order]).mean())
    print(f"{'step':<22}{'seconds':>9}")
    for name, t in [
        ("table -> matrix", t_matrix),
        ("embeddings -> matrix", t_text),
        ("fit", t_fit),
        ("predict (all rows)", t_pred),
        ("total aggregation", total),
    ]:
        print(f"{name:<22}{t:>9.1f}")
    print(f"peak memory (whole process, incl. the synthetic table): {peak_mib():.0f} MiB")
    print(
        f"accuracy vs synthetic truth: {acc:.4f}; target total <= 120 s: {'met' if total <= 120 else 'MISSED'} "
        f"({total / 120:.2f} of the budget)"
    )


if __name__ == "__main__":
    main()
