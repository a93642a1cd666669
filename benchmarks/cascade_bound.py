"""How close can a best-first cascade come to all five annotators? An upper bound on TREC.

A cascade with the single best annotator first (chosen on the 50 gold rows, as
``cascade.order: gold`` does) asks the other four only on the rows it opens. Whatever rule picks
those rows and whatever aggregator labels them, it cannot do better on them than the labels the
default aggregator gives with all five answers on *every* row (fitted on the whole five-annotator
table, which a cascade never has), and on the other rows than the default aggregator fitted on
the first annotator's answers (and the texts) alone. This script opens the ``q`` least confident
rows by three rankings (the first annotator's vote share, its label probability, and the
one-annotator aggregator's own confidence, which needs the first stage on the whole pool
first), takes those two label sources, and prints the accuracy on the non-gold rows against the
default aggregator with all five annotators everywhere. LLM calls per text: 1 + 4 q, plus the
gold rows' five.

    .venv/bin/python benchmarks/cascade_bound.py [--seeds 0 1 2] [--q 0.05 0.1 0.15 0.25]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aggregation_quality import LABELS, trec_matrix  # noqa: E402

from molal_ray.aggregation import Gold, get_aggregator  # noqa: E402
from molal_ray.aggregation.cascade import order_by_accuracy  # noqa: E402


def fitted_proba(m, gold: Gold, seed: int) -> np.ndarray:
    agg = get_aggregator("default", seed=seed)  # labels only: its temperature never changes one
    return agg.unfitted_copy(**agg.label_only).fit(m, gold).predict_proba(m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--gold", type=int, default=50)
    ap.add_argument("--q", type=float, nargs="*", default=[0.05, 0.1, 0.15, 0.25])
    args = ap.parse_args()
    t0 = time.monotonic()
    m, y = trec_matrix()
    n = len(y)
    acc: dict[tuple[str, float], list[float]] = {}
    for seed in args.seeds:
        gi = np.sort(np.random.default_rng(seed).choice(n, args.gold, replace=False))
        rest = np.setdiff1d(np.arange(n), gi)
        gold = Gold(gi, y[gi], len(LABELS))
        every = fitted_proba(m, gold, seed).argmax(1)
        stages, _ = order_by_accuracy(m, gi, y[gi], [m.annotators[:1], m.annotators[1:]])
        first = m.annotators.index(stages[0][0])
        alone = fitted_proba(m.aligned(stages[0]), gold, seed)
        votes, probs = np.nan_to_num(m.votes[:, first]), np.nan_to_num(m.probs[:, first])
        rankings = {
            "first annotator's vote share": votes.max(1) + 1e-3 * probs.max(1),  # ties by its probability
            "first annotator's label probability": probs.max(1),
            "one-annotator aggregator's confidence": alone.max(1),
        }
        acc.setdefault(("all five on every row", 0.0), []).append(float(np.mean(every[rest] == y[rest])))
        acc.setdefault(("first annotator alone (+ texts)", 0.0), []).append(
            float(np.mean(alone[rest].argmax(1) == y[rest]))
        )
        for name, confidence in rankings.items():
            order = np.argsort(confidence, kind="stable")
            order = order[~np.isin(order, gi)]
            for q in args.q:
                labels = alone.argmax(1)
                opened = order[: int(q * n)]
                labels[opened] = every[opened]
                acc.setdefault((name, q), []).append(float(np.mean(labels[rest] == y[rest])))
        print(f"seed {seed}: first {stages[0][0]}", flush=True)
    ref = float(np.mean(acc[("all five on every row", 0.0)]))
    extra = 4 * args.gold / n
    print(f"\nmean over seeds {args.seeds} ({n - args.gold} rows each), upper bounds of a best-first cascade:")
    print(f"{'rows opened by':<40} {'q':>5} {'calls/text':>10} {'accuracy':>9} {'vs all five':>12}")
    for (name, q), v in acc.items():
        calls = 5.0 if name.startswith("all five") else 1 + 4 * q + extra
        print(f"{name:<40} {q:>5.2f} {calls:>10.2f} {np.mean(v):>9.4f} {(np.mean(v) - ref) * 100:>+11.2f}p")
    print(f"\n({time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
