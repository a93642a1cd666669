"""Routing doubtful samples to people: label accuracy when the least certain share of the pool is
labelled by a person instead of the LLM mixture (TREC, 5 recorded LLMs, 5,452 questions).

For each seed, 50 gold labels are drawn; the default aggregator is fitted on the table and those
50; then 10%, 20% and 30% of the other rows go to people (simulated by the gold labels), chosen
by each routing rule (margin, entropy, confidence, disagreement) or at random, and the label
accuracy of all the other rows (people's and the aggregator's labels together) is printed, side
by side with no routing. A second column refits the aggregator with the people's labels added to
its gold set (what the loop does in the next round) before labelling the rest.

    .venv/bin/python benchmarks/routing.py [--seeds 3] [--shares 0.1 0.2 0.3]
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
from molal_ray.review import least_certain  # noqa: E402

RULES = ("margin", "entropy", "confidence", "disagreement", "random")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gold", type=int, default=50)
    ap.add_argument("--shares", type=float, nargs="*", default=[0.1, 0.2, 0.3])
    ap.add_argument("--no-refit", action="store_true", help="skip the refit column (faster)")
    args = ap.parse_args()
    t0 = time.monotonic()
    m, y = trec_matrix()
    C = len(LABELS)
    print(f"TREC: {len(y)} rows, {len(m.annotators)} annotators; {args.gold} gold; seeds 0..{args.seeds - 1}")
    res: dict[tuple[str, float, str], list[float]] = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        gold_idx = np.sort(rng.choice(len(y), args.gold, replace=False))
        rest = np.setdiff1d(np.arange(len(y)), gold_idx)
        probs = get_aggregator("default").fit(m, Gold(gold_idx, y[gold_idx], C)).predict_proba(m.take(rest))
        base = float((probs.argmax(1) == y[rest]).mean())
        res.setdefault(("none", 0.0, "taken"), []).append(base)
        print(f"seed {seed}: no routing {base:.4f}", flush=True)
        for share in args.shares:
            n = int(round(share * len(rest)))
            for rule in RULES:
                if rule == "random":
                    pos = np.sort(np.random.default_rng([seed, 99]).choice(len(rest), n, replace=False))
                else:
                    pos = least_certain(
                        probs, n, rule, m.votes[rest] if rule == "disagreement" else None, ids=list(m.sample_ids[rest])
                    )
                labels = probs.argmax(1).copy()
                labels[pos] = y[rest][pos]  # people's labels
                res.setdefault((rule, share, "taken"), []).append(float((labels == y[rest]).mean()))
                if not args.no_refit and rule in ("margin", "random"):
                    g = np.concatenate([gold_idx, rest[pos]])
                    p2 = get_aggregator("default").fit(m, Gold(g, y[g], C)).predict_proba(m.take(rest))
                    labels2 = p2.argmax(1)
                    labels2[pos] = y[rest][pos]
                    res.setdefault((rule, share, "refit"), []).append(float((labels2 == y[rest]).mean()))
            print(f"  {share:.0%}: " + "  ".join(f"{r} {res[(r, share, 'taken')][-1]:.4f}" for r in RULES), flush=True)
    print(
        f"\nlabel accuracy on the {len(y) - args.gold} non-gold rows, mean over {args.seeds} seeds "
        f"(people's labels for the routed share):"
    )
    print(f"{'routed':>7} | " + " | ".join(f"{r:>12}" for r in RULES) + " | margin+refit | random+refit")
    print(f"{'0%':>7} | {np.mean(res[('none', 0.0, 'taken')]):>12.4f} |")
    for share in args.shares:
        row = [f"{np.mean(res[(r, share, 'taken')]):>12.4f}" for r in RULES]
        refit = [
            f"{np.mean(res[(r, share, 'refit')]):>12.4f}" if (r, share, "refit") in res else f"{'-':>12}"
            for r in ("margin", "random")
        ]
        print(f"{share:>7.0%} | " + " | ".join(row + refit))
    print(f"\n({time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
