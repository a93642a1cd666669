"""The annotator cascade on TREC (5 recorded LLMs, 5,452 questions): LLM calls per text and label
accuracy, against all five annotators on every text.

For each seed, 50 gold labels are drawn; as the label job does with ``cascade.order: gold``,
every annotator labels those 50 rows, the stages (``--first`` annotators, then the others) are
filled by accuracy on them, and every other row goes through the stages with the job's rule
(``molal_ray/aggregation/cascade.py``: the stage-one annotators agree and each gives its label at
least ``--min-share`` of its votes, or the row goes on). Annotators not asked are absent from the
matrix, as in the table the job writes; the gold rows are then seen as the cascade would have
left them (``cascade_view``, what ``molal-ray aggregate`` and the loop do) or, with
``--gold-rows full``, with all five answers (what an aggregator fitted without the view sees).
Accuracy is on the 5,402 other rows, for majority vote and the default aggregator (fitted on the
50 gold). The LLM calls count the gold rows' five.

    .venv/bin/python benchmarks/cascade.py [--seeds 3] [--first 1 2] [--min-share 0.6 0.8 0.9]
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
from molal_ray.aggregation.cascade import cascade_view, order_by_accuracy, stage_reached  # noqa: E402
from molal_ray.aggregation.features import AnnotationMatrix  # noqa: E402


def cascaded(
    m: AnnotationMatrix, stages: list[list[str]], min_share: float, gold_idx: np.ndarray, view: bool
) -> tuple[AnnotationMatrix, float]:
    """The matrix a cascaded label job leaves (every annotator on the gold rows), as the
    aggregator sees it, and its LLM calls per text."""
    last = stage_reached(m, stages, min_share)
    last[gold_idx] = len(stages) - 1  # asked by everyone, to rank the annotators
    P, V, present = m.probs.copy(), m.votes.copy(), m.present.copy()
    for k, stage in enumerate(stages):
        for a in stage:
            j = m.annotators.index(a)
            hide = last < k
            P[hide, j], V[hide, j], present[hide, j] = np.nan, np.nan, False
    calls = float(sum(len(st) * (last >= k).sum() for k, st in enumerate(stages)) / len(m))
    table = AnnotationMatrix(m.sample_ids, m.annotators, P, V, present, m.embeddings)
    return (cascade_view(table, stages, min_share) if view else table), calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gold", type=int, default=50)
    ap.add_argument("--first", type=int, nargs="*", default=[1, 2], help="annotators in stage one")
    ap.add_argument("--min-share", type=float, nargs="*", default=[0.6, 0.8, 0.9])
    ap.add_argument(
        "--gold-rows",
        choices=["view", "full"],
        default="view",
        help="view: the gold rows as the cascade leaves them (the job's aggregation); full: with all five answers",
    )
    args = ap.parse_args()
    t0 = time.monotonic()
    m, y = trec_matrix()
    C = len(LABELS)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        gold_idx = np.sort(rng.choice(len(y), args.gold, replace=False))
        rest = np.setdiff1d(np.arange(len(y)), gold_idx)
        gold = Gold(gold_idx, y[gold_idx], C)
        _, acc = order_by_accuracy(m, gold_idx, y[gold_idx], [list(m.annotators)])
        print(
            f"seed {seed}: accuracy on the gold rows " + ", ".join(f"{a} {v:.2f}" for a, v in acc.items()), flush=True
        )
        runs: list[tuple[str, AnnotationMatrix, float]] = [("all five", m, 5.0)]
        for k in args.first:
            stages, _ = order_by_accuracy(m, gold_idx, y[gold_idx], [m.annotators[:k], m.annotators[k:]])
            for s in args.min_share:
                runs.append((f"{k} first, {s}", *cascaded(m, stages, s, gold_idx, args.gold_rows == "view")))
                # What stage one settles, and how right its own vote is there (what no aggregator can redo).
                settled = stage_reached(m, stages, s)[rest] == 0
                own = m.votes[rest][:, [m.annotators.index(a) for a in stages[0]]].argmax(2)[:, 0] == y[rest]
                print(
                    f"  {k} first, {s}: stage one settles {settled.mean():.1%} of the rows; its first annotator "
                    f"is right on {own[settled].mean():.1%} of those",
                    flush=True,
                )
        for name, mm, calls in runs:
            maj = get_aggregator("majority").fit(mm, gold).predict_proba(mm.take(rest)).argmax(1)
            agg = get_aggregator("default", seed=seed)  # accuracy only: its temperature never changes a label
            dflt = agg.unfitted_copy(**agg.label_only).fit(mm, gold).predict_proba(mm.take(rest)).argmax(1)
            res = (calls, float((maj == y[rest]).mean()), float((dflt == y[rest]).mean()))
            rows.setdefault(name, []).append(res)
            print(f"  {name:<14} calls/text {res[0]:.2f}  majority {res[1]:.4f}  default {res[2]:.4f}", flush=True)
    print(f"\nmean over {args.seeds} seeds ({len(y) - args.gold} rows each; gold rows: {args.gold_rows}):")
    print(f"{'':<14} | calls/text | share of calls | majority | default | default - all five")
    base = np.mean([r[2] for r in rows["all five"]])
    for name, rs in rows.items():
        calls, maj, dflt = (float(np.mean([r[i] for r in rs])) for i in range(3))
        print(f"{name:<14} | {calls:>10.2f} | {calls / 5:>14.2f} | {maj:>8.4f} | {dflt:>7.4f} | {dflt - base:+.4f}")
    print(f"\n({time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
