"""Ablation of the default aggregator's settings on TREC, on development seeds.

The default's settings (self-training threshold, class floor, class weights and passes, the
gold-only model's weight in the pool, final regularisation, weight of gold rows in Dawid-Skene)
are compared here on seeds that `aggregation_quality.py` does not report (100 and up by
default), so that what is reported there is not tuned on its own evaluation rows. Each seed
draws ``--gold`` random gold labels (50 by default); accuracy is measured on all other rows.
Calibration is off (it does not change labels) to keep the run short.

    .venv/bin/python benchmarks/aggregation_ablation.py [--seeds 6] [--first-seed 100] [--gold 50]
        [--pool N] [--variants PREFIX ...] [--no-ceiling] [--text]

``--text`` compares the settings of the text-aware default (``pooled-text``: its text view over
the questions' embeddings) instead of those of the answers' aggregator it builds on.
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

from benchmarks.aggregation_quality import draw_gold, trec_matrix  # noqa: E402
from molal_ray.aggregation import get_aggregator  # noqa: E402
from molal_ray.aggregation.learners import linear_features  # noqa: E402
from molal_ray.aggregation.pooled import PooledAggregator  # noqa: E402
from molal_ray.aggregation.text_view import TextAwareAggregator  # noqa: E402

VARIANTS: dict[str, dict] = {
    "default": {},
    "previous (no class weights)": {"balance_classes": False},
    "before (0.9, no floor, no class weights)": {"threshold": 0.9, "class_floor": 0.0, "balance_classes": False},
    "first (0.7, exponent 1, 1 pass, no floor)": {
        "threshold": 0.7,
        "gold_half_weight_rows": 0.0,
        "max_passes": 1,
        "class_floor": 0.0,
        "balance_classes": False,
    },
    "class weights uncapped (balanced)": {"max_class_weight": float("inf")},
    "max_class_weight=3": {"max_class_weight": 3.0},
    "max_class_weight=1.5": {"max_class_weight": 1.5},
    "no class floor": {"class_floor": 0.0},
    "class_floor=0.3": {"class_floor": 0.3},
    "threshold=0.9": {"threshold": 0.9},
    "threshold=0.95": {"threshold": 0.95},
    "threshold=0.97": {"threshold": 0.97},
    "threshold=0.99": {"threshold": 0.99},
    "threshold=1.01 (no self-training)": {"threshold": 1.01, "class_floor": 0.0},
    "one self-training pass": {"max_passes": 1},
    "max_passes=3": {"max_passes": 3},
    "max_passes=20": {"max_passes": 20},
    "gold exponent 1 (half_weight_rows=0)": {"gold_half_weight_rows": 0.0},
    "gold exponent 0 (Dawid-Skene only)": {"gold_half_weight_rows": 1e12},
    "half_weight_rows=150": {"gold_half_weight_rows": 150.0},
    "final_c=0.1": {"final_c": 0.1},
    "gold_weight=5": {"gold_weight": 5.0},
    "gold_weight=80": {"gold_weight": 80.0},
}

TEXT_VARIANTS: dict[str, dict] = {
    "default": {},
    "answers alone (text_exponents=[0])": {"text_exponents": (0.0,)},
    "fixed weight 2 (text_exponents=[2])": {"text_exponents": (2.0,)},
    "fixed weight 4 (before the weight was earned)": {"text_exponents": (4.0,)},
    "fixed weight 8 (text_exponents=[8])": {"text_exponents": (8.0,)},
    "the best weight (text_choice_se=0)": {"text_choice_se": 0.0},
    "one-standard-error rule (text_choice_se=1)": {"text_choice_se": 1.0},
    "text_gold_weight=20": {"text_gold_weight": 20.0},
    "text_c=300": {"text_c": 300.0},
    "text_c=1000": {"text_c": 1000.0},
    "text_folds=2": {"text_folds": 2},
    "text_folds=5": {"text_folds": 5},
    "text_threshold=0.9": {"text_threshold": 0.9},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--gold", type=int, default=50)
    ap.add_argument("--no-ceiling", action="store_true", help="skip the full-supervision ceiling")
    ap.add_argument(
        "--pool",
        type=int,
        default=None,
        help="fit on the gold rows plus this many other random rows, scored on those (the loop's "
        "case: a few hundred annotated rows a round); all rows by default",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        metavar="PREFIX",
        default=None,
        help="run only the variants whose names start with one of these (the default, Dawid-Skene "
        "and majority always run); all by default",
    )
    ap.add_argument("--text", action="store_true", help="the text-aware default's settings (TEXT_VARIANTS)")
    args = ap.parse_args()
    table = TEXT_VARIANTS if args.text else VARIANTS
    make = TextAwareAggregator if args.text else PooledAggregator
    variants = table
    if args.variants is not None:
        variants = {n: kw for n, kw in table.items() if n == "default" or n.startswith(tuple(args.variants))}
        if len(variants) == 1:
            ap.error(f"--variants: no variant starts with {args.variants}; the variants are {list(table)}")
    m_all, y_all = trec_matrix(text=args.text)
    if args.pool is not None and not 0 <= args.pool <= len(m_all) - args.gold:
        ap.error(f"--pool must be between 0 and {len(m_all) - args.gold} (the rows that are not gold); got {args.pool}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    acc: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        m, y = m_all, y_all
        if args.pool is not None:  # a random sub-table of gold + pool rows, as a loop round sees
            rows = np.sort(
                np.random.default_rng(10_000 + seed).choice(len(m_all), args.gold + args.pool, replace=False)
            )
            m, y = m_all.take(rows), y_all[rows]
        gold, ev = draw_gold(m, y, seed, args.gold)
        runs = {name: make(seed=seed, calibrate=False, **kw) for name, kw in variants.items()}
        runs["dawid-skene alone"] = get_aggregator("dawid-skene", seed=seed)
        runs["majority"] = get_aggregator("majority", seed=seed)
        for name, agg in runs.items():
            p = agg.fit(m, gold).predict_proba(m)
            acc.setdefault(name, []).append(float((p.argmax(1)[ev] == y[ev]).mean()))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    base = np.array(acc["default"])
    pool = "all other rows" if args.pool is None else f"{args.pool} random other rows"
    print(f"\nTREC, {args.gold} random gold + {pool}, accuracy on the non-gold rows, seeds {seeds[0]}..{seeds[-1]}")
    print(f"{'variant':<44}{'mean':>8}{'min':>8}{'vs default':>12}{'wins':>6}")
    for name, v in acc.items():
        d = np.array(v) - base
        print(f"{name:<44}{np.mean(v):>8.4f}{np.min(v):>8.4f}{np.mean(d):>+12.4f}{int((d > 0).sum()):>4}/{len(v)}")
    if args.no_ceiling:
        return
    print(
        f"\nceiling: the final model's features (logistic regression, C=1) with every row's gold label, "
        f"5-fold out-of-fold accuracy {supervised_ceiling(m_all, y_all):.4f}"
    )


def supervised_ceiling(m, y: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    """What the features allow with full supervision: how far 50 labels are from it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    pred = cross_val_predict(model, linear_features(m), y, cv=KFold(5, shuffle=True, random_state=0))
    return float((pred == y).mean())


if __name__ == "__main__":
    main()
