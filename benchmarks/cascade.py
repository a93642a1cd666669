"""The annotator cascade on TREC (5 recorded LLMs, 5,452 questions): LLM calls per text and label
accuracy, against all five annotators on every text.

For each seed, 50 gold labels are drawn and the two annotators most accurate on them form the
first stage; the other three are asked only about the texts the first two leave unsettled
(they disagree, or either gave its top label less than ``--min-share`` of its votes: the rule of
``molal_ray/annotation/cascade.py``, the one the label job applies). Annotators not asked are
absent from the matrix, as in the table the label job writes. Accuracy is on the 5,402 other
rows, for majority vote and the default aggregator (fitted on the 50 gold).

    .venv/bin/python benchmarks/cascade.py [--seeds 3] [--min-share 0.6 0.8 0.9]
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
from molal_ray.aggregation.features import AnnotationMatrix  # noqa: E402
from molal_ray.annotation.cascade import settled  # noqa: E402


def cascaded(m: AnnotationMatrix, first: list[int], min_share: float) -> tuple[AnnotationMatrix, float]:
    """The matrix the label job would write with ``first`` as stage one and the rest as stage
    two; and its LLM calls per text."""
    ok = settled(m.votes[:, first], m.present[:, first], min_share)
    later = [a for a in range(len(m.annotators)) if a not in first]
    P, V, present = m.probs.copy(), m.votes.copy(), m.present.copy()
    for a in later:
        P[ok, a] = np.nan
        V[ok, a] = np.nan
        present[ok, a] = False
    calls = (len(first) * len(ok) + len(later) * int((~ok).sum())) / len(ok)
    return AnnotationMatrix(m.sample_ids, m.annotators, P, V, present), calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gold", type=int, default=50)
    ap.add_argument("--min-share", type=float, nargs="*", default=[0.6, 0.8, 0.9])
    args = ap.parse_args()
    t0 = time.monotonic()
    m, y = trec_matrix()
    C = len(LABELS)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        gold_idx = np.sort(rng.choice(len(y), args.gold, replace=False))
        rest = np.setdiff1d(np.arange(len(y)), gold_idx)
        acc_on_gold = [(m.votes[gold_idx, a].argmax(1) == y[gold_idx]).mean() for a in range(len(m.annotators))]
        first = [int(a) for a in np.argsort(acc_on_gold)[::-1][:2]]
        print(f"seed {seed}: first stage {[m.annotators[a] for a in first]}", flush=True)
        for name, mm, calls in [("all five", m, 5.0)] + [(f"cascade {s}", *cascaded(m, first, s))
                                                        for s in args.min_share]:
            gold = Gold(gold_idx, y[gold_idx], C)
            maj = get_aggregator("majority").fit(mm, gold).predict_proba(mm.take(rest)).argmax(1)
            dflt = get_aggregator("default").fit(mm, gold).predict_proba(mm.take(rest)).argmax(1)
            res = (calls, float((maj == y[rest]).mean()), float((dflt == y[rest]).mean()))
            rows.setdefault(name, []).append(res)
            print(f"  {name:<14} calls/text {res[0]:.2f}  majority {res[1]:.4f}  default {res[2]:.4f}", flush=True)
    print(f"\nmean over {args.seeds} seeds ({len(y) - args.gold} rows each):")
    print(f"{'':<14} | calls/text | share of calls | majority | default | default - all five")
    base = np.mean([r[2] for r in rows["all five"]])
    for name, rs in rows.items():
        calls, maj, dflt = (float(np.mean([r[i] for r in rs])) for i in range(3))
        print(f"{name:<14} | {calls:>10.2f} | {calls / 5:>14.2f} | {maj:>8.4f} | {dflt:>7.4f} | {dflt - base:+.4f}")
    print(f"\n({time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
