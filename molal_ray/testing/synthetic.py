"""Synthetic annotation tables with a realistic mix of agreement, for tests and benchmarks.

Each annotator has its own accuracy and a systematic confusion (it answers a fixed wrong class
for part of one true class), its label probabilities are a noisy, peaked distribution around
its answer, and its T votes are drawn from a tempered version of them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from molal_ray import schema


def synthetic_arrays(
    n: int,
    num_classes: int = 6,
    accuracies: tuple[float, ...] = (0.85, 0.75, 0.7, 0.65, 0.6),
    n_samples: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth (S,), probs (S, A, C), votes (S, A, C)) as float32."""
    rng = np.random.default_rng(seed)
    A, C = len(accuracies), num_classes
    truth = rng.integers(0, C, n)
    probs = np.empty((n, A, C), np.float32)
    votes = np.empty((n, A, C), np.float32)
    for a, acc in enumerate(accuracies):
        answer = truth.copy()
        wrong = rng.random(n) > acc
        answer[wrong] = rng.integers(0, C, int(wrong.sum()))
        # A systematic confusion: half of class a % C is answered as class (a + 1) % C.
        src, dst = a % C, (a + 1) % C
        swap = (truth == src) & (rng.random(n) < 0.5)
        answer[swap] = dst
        logits = rng.normal(0, 1, (n, C))
        logits[np.arange(n), answer] += rng.uniform(1.5, 5.0, n)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        probs[:, a] = p
        q = p ** (1 / 0.7)
        q /= q.sum(1, keepdims=True)
        cdf = q.cumsum(1)
        draws = (cdf[:, None, :] < rng.random((n, n_samples, 1))).sum(-1).clip(0, C - 1)
        counts = np.zeros((n, C), np.float32)
        np.add.at(counts, (np.repeat(np.arange(n), n_samples), draws.ravel()), 1)
        votes[:, a] = counts / n_samples
    return truth, probs, votes


def synthetic_table(n: int, num_classes: int = 6, seed: int = 0, **kw) -> tuple[pa.Table, np.ndarray]:
    """The long annotation table (Arrow, built column-wise) and the true class of each sample."""
    truth, probs, votes = synthetic_arrays(n, num_classes, seed=seed, **kw)
    S, A, C = probs.shape
    ids = pa.array([f"s{i:08d}" for i in range(n)], pa.string())
    sid = pa.chunked_array([ids] * A)
    ann = pa.chunked_array([pa.array([f"llm{a}"] * n, pa.string()) for a in range(A)])

    def lists(x: np.ndarray) -> pa.ChunkedArray:
        chunks = []
        for a in range(A):
            flat = pa.array(x[:, a].ravel(), pa.float32())
            chunks.append(pa.ListArray.from_arrays(pa.array(np.arange(0, S * C + 1, C, dtype=np.int32)), flat))
        return pa.chunked_array(chunks)

    zeros = pa.chunked_array([pa.array(np.zeros(n, np.int32))] * A)
    tens = pa.chunked_array([pa.array(np.full(n, 10, np.int32))] * A)
    nulls = pa.chunked_array([pa.nulls(n, pa.string())] * A)
    table = pa.table(
        {
            schema.SAMPLE_ID: sid,
            schema.ANNOTATOR: ann,
            schema.PROBS: lists(probs),
            schema.VOTES: lists(votes),
            schema.N_INVALID: zeros,
            schema.N_SAMPLES: tens,
            schema.ERROR: nulls,
            schema.WARNING: nulls,
        }
    )
    return table, truth


def synthetic_embeddings(
    truth: np.ndarray,
    dim: int = 32,
    noise: float = 0.6,
    seed: int = 0,
    noise_seed: int | None = None,
    num_classes: int = 6,
) -> np.ndarray:
    """(S, dim) unit vectors that carry each sample's true class: its class's random direction
    (drawn from ``seed``) plus Gaussian noise (from ``noise_seed``, by default ``seed``; its size
    sets how well a linear model separates the classes). Chunks of one pool share ``seed``."""
    centres = np.random.default_rng(seed).standard_normal((max(num_classes, int(truth.max()) + 1), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, 1] if noise_seed is None else [seed, 2, noise_seed])
    x = centres[truth] + noise * rng.standard_normal((len(truth), dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


SYNTHETIC_LABELS = ["a", "b", "c", "d", "e", "f"]
SYNTHETIC_ANNOTATORS = ["m1", "m2", "m3", "m4", "m5"]


def write_synthetic_pool(n: int, root: str, seed: int = 0, gold_rows: int = 0) -> None:
    """A pool of ``n`` synthetic texts (``root/pool.parquet``: id, text), a recording of five
    annotators for the replay engine (``root/recording.parquet``) and, with ``gold_rows``, the
    true labels of that many random rows (``root/gold.csv``). Built column-wise with Arrow, so
    millions of rows take seconds and little memory; run it in a child process to keep a
    benchmark's driver free of it."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from molal_ray.engines.recording import RECORDING_SCHEMA

    out = Path(root)
    rng = np.random.default_rng(seed)
    C = len(SYNTHETIC_LABELS)
    truth = rng.integers(0, C, n)
    ids = pa.array([f"s{i:08d}" for i in range(n)], pa.string())
    topics = np.array(["weather", "history", "sport", "music", "science", "travel"])
    texts = pa.array([f"question {i} about {topics[t]} and topic {i % 97}?" for i, t in enumerate(truth)], pa.string())
    pq.write_table(pa.table({"id": ids, "text": texts}), out / "pool.parquet", row_group_size=50_000)
    label_names = pa.array(SYNTHETIC_LABELS, pa.string())
    with pq.ParquetWriter(out / "recording.parquet", RECORDING_SCHEMA) as writer:
        for a in SYNTHETIC_ANNOTATORS:
            p = rng.dirichlet(np.ones(C) * 0.3, n)
            p[np.arange(n), truth] += 1.0
            p /= p.sum(1, keepdims=True)
            draws = (p.cumsum(1)[:, None, :] > rng.random((n, 10, 1))).argmax(-1)
            probs = pa.ListArray.from_arrays(pa.array(np.arange(0, n * C + 1, C, dtype=np.int32)), pa.array(p.ravel()))
            samples = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * 10 + 1, 10, dtype=np.int32)), label_names.take(pa.array(draws.ravel()))
            )
            writer.write_table(
                pa.table(
                    {
                        "sample_id": ids,
                        "annotator": pa.array([a] * n, pa.string()),
                        "label_probs": probs,
                        "samples": samples,
                    },
                    schema=RECORDING_SCHEMA,
                )
            )
    if gold_rows:
        pick = np.sort(rng.choice(n, min(gold_rows, n), replace=False))
        pq.write_table(
            pa.table({"sample_id": ids.take(pa.array(pick)), "label": label_names.take(pa.array(truth[pick]))}),
            out / "gold.parquet",
        )
