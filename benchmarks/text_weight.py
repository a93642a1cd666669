"""What the text view is worth inside the loop: the labels a loop's rounds receive, with the
answers alone, with the text view at a fixed weight, and with the weight it earns each round.

An offline screen of the loop's aggregation (no Ray, no classifier): random queries, so the rows a
round labels do not depend on the classifier and every rule labels the same rows. Each round, the
aggregator is fitted on the table the loop would hold then (the ``--gold`` people's rows and every
row queried so far) with the people's labels, and labels the round's ``--query-size`` new rows, as
``Coordinator.aggregate`` does. The text view's embeddings are the loop example's (MiniLM, mean and
first two tokens), in four views:

- ``real``: the questions' own embeddings;
- ``shuffled``: another question's embedding (a fixed permutation): texts with no label signal;
- ``first-word``: the first token's part alone: weak, but not useless, on TREC;
- ``mean-only``: the mean-pooled part alone: on TREC, where a question's type lies in its first
  words, a weak encoder (a linear model on it with every gold label is far under the whole one).

One fit of the default per round gives every rule's labels: the answers view and the text view do
not depend on the weight, and a temperature does not change a label. Rules: ``answers`` (weight 0),
``fixed 4`` (the default before the weight was earned), ``earned`` (the default: the weakest weight
within ``text_choice_se`` standard errors of the best held-out log-loss), ``best`` (the best held-out
log-loss, ``text_choice_se=0``) and ``one-SE`` (``text_choice_se=1``), and majority vote.

    .venv/bin/python benchmarks/text_weight.py [--seeds 5] [--first-seed 0] [--views real shuffled ...]

Development seeds (100 and up) chose the rule; the reported figures use seeds 0 and up.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.aggregation_quality import LABELS, trec_matrix  # noqa: E402
from molal_ray.aggregation import Gold, get_aggregator  # noqa: E402
from molal_ray.aggregation.calibration import apply_temperature, fit_temperature  # noqa: E402
from molal_ray.aggregation.features import AnnotationMatrix  # noqa: E402
from molal_ray.aggregation.text_view import TextAwareAggregator, pool_views, row_nll, weakest_within  # noqa: E402

VIEWS = ("real", "shuffled", "first-word", "mean-only")


def view_of(E: np.ndarray, name: str) -> np.ndarray:
    d = E.shape[1] // 3  # the example's embedding: three unit-length parts (mean, token 1, token 2)
    if name == "real":
        return E
    if name == "shuffled":
        return E[np.random.default_rng(0).permutation(len(E))]
    if name == "first-word":
        return np.ascontiguousarray(E[:, d : 2 * d] * np.sqrt(3.0))
    if name == "mean-only":
        return np.ascontiguousarray(E[:, :d] * np.sqrt(3.0))
    raise ValueError(f"view: got {name!r}; expected one of {VIEWS}")


def rule_weight(agg: TextAwareAggregator, gold: Gold, z: float) -> float:
    """The weight ``text_choice_se = z`` would choose from this fit's held-out views."""
    if not agg.text_used_ or not hasattr(agg, "held_out_views_"):
        return 0.0
    Q, P = agg.held_out_views_
    grid = agg.text_exponents
    losses = []
    for e in grid:
        R = pool_views(Q, P, e)
        losses.append(row_nll(apply_temperature(R, fit_temperature(R, gold.y)), gold.y))
    return grid[weakest_within(np.array(losses), z)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--gold", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--query-size", type=int, default=50)
    ap.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    m_all, y_all = trec_matrix(text=True)
    assert m_all.embeddings is not None
    rules = ("majority", "answers", "fixed 4", "earned", "best", "one-SE")
    t0 = time.perf_counter()
    table: dict[str, dict[str, list[float]]] = {}
    weights: dict[str, list[float]] = {}
    for view in args.views:
        E = view_of(m_all.embeddings, view)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            order = np.random.default_rng(seed).permutation(len(m_all))
            gold = Gold(np.arange(args.gold), y_all[order[: args.gold]], len(LABELS))
            right = {r: 0 for r in rules}
            n = 0
            for r in range(1, args.rounds + 1):
                rows = order[: args.gold + args.query_size * r]
                m = m_all.take(rows)
                m = AnnotationMatrix(m.sample_ids, m.annotators, m.probs, m.votes, m.present, E[rows])
                q = np.arange(len(rows) - args.query_size, len(rows))
                y = y_all[rows[q]]
                agg = get_aggregator("default", seed=0).fit(m, gold)
                assert isinstance(agg, TextAwareAggregator)
                chosen = {
                    "answers": 0.0,
                    "fixed 4": 4.0,
                    "earned": agg.text_weight,
                    "best": rule_weight(agg, gold, 0.0),
                    "one-SE": rule_weight(agg, gold, 1.0),
                }
                weights.setdefault(view, []).append(agg.text_weight)
                for rule, e in chosen.items():
                    agg.text_exponent_ = e
                    right[rule] += int((agg.predict_proba(m.take(q)).argmax(1) == y).sum())
                right["majority"] += int((get_aggregator("majority").predict_proba(m.take(q)).argmax(1) == y).sum())
                n += len(q)
            for rule in rules:
                table.setdefault(view, {}).setdefault(rule, []).append(right[rule] / n)
            print(
                f"{view:<11} seed {seed}: "
                + "  ".join(f"{rule} {right[rule] / n:.4f}" for rule in rules)
                + f"  ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    seeds = f"seeds {args.first_seed}..{args.first_seed + args.seeds - 1}"
    print(
        f"\nTREC, {args.gold} gold, {args.rounds} rounds of {args.query_size} random queries, {seeds}: "
        "accuracy of the labels the rounds received (mean over seeds; in brackets the change against "
        "the answers alone, mean and worst seed, in points)"
    )
    print(f"{'rule':<10}" + "".join(f"{v:>26}" for v in args.views))
    for rule in rules:
        cells = []
        for v in args.views:
            a = np.array(table[v][rule])
            d = (a - np.array(table[v]["answers"])) * 100
            cells.append(f"{a.mean():.4f} ({d.mean():+.1f}, {d.min():+.1f})")
        print(f"{rule:<10}" + "".join(f"{c:>26}" for c in cells))
    print(
        "\nmean text weight the default earned per round: "
        + ", ".join(f"{v} {np.mean(w):.2f}" for v, w in weights.items())
    )


if __name__ == "__main__":
    main()
