"""`molal-ray aggregate --pool`: the pool's texts embedded once by Ray Data, cached, and read by
the default (text-aware) aggregator."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from click.testing import CliRunner

from molal_ray.cli import main
from molal_ray.testing.synthetic import SYNTHETIC_LABELS, synthetic_table


def test_aggregate_embeds_the_pool_once_and_reads_the_texts(tmp_path, ray_local):
    from molal_ray.testing.tiny_models import build_tiny_bert

    n = 400
    table, truth = synthetic_table(n, seed=5)
    pq.write_table(table, tmp_path / "table.parquet")
    ids = [f"s{i:08d}" for i in range(n)]
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    texts = [f"question {words[t]} number {i}" for i, t in enumerate(truth)]
    pd.DataFrame({"id": ids + ["extra-1"], "text": texts + ["a pool row no annotator saw"]}).to_parquet(
        tmp_path / "pool.parquet"
    )
    pd.DataFrame({"sample_id": ids[:40], "label": [SYNTHETIC_LABELS[t] for t in truth[:40]]}).to_csv(
        tmp_path / "gold.csv", index=False
    )
    encoder = build_tiny_bert(tmp_path / "bert", texts[:50])
    args = [
        "aggregate",
        "--annotations",
        str(tmp_path / "table.parquet"),
        "--gold",
        str(tmp_path / "gold.csv"),
        "--labels",
        ",".join(SYNTHETIC_LABELS),
        "--pool",
        str(tmp_path / "pool.parquet"),
        "--encoder",
        str(encoder),
        "--first-tokens",
        "0",
        "--max-length",
        "16",
        "--no-validate",
    ]

    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a.parquet"), "--report", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    assert "embedding the pool's texts" in r.output and "401 pool texts embedded" in r.output
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["method"] == "pooled-text"
    tv = report["text_view"]
    assert tv["used"] and tv["samples_with"] == n and tv["samples_without"] == 0 and tv["dim"] == 32
    (store,) = [p for p in (tmp_path / "_embeddings").iterdir() if p.is_dir() and not p.name.startswith("_")]
    files = sorted(store.glob("embed-*.parquet"))
    assert files and (store / "_manifest.json").exists()
    stamps = [f.stat().st_mtime_ns for f in files]

    # A second aggregation of the same pool by the same encoder reads the cached embeddings.
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b.parquet")])
    assert r.exit_code == 0, r.output
    assert [f.stat().st_mtime_ns for f in sorted(store.glob("embed-*.parquet"))] == stamps
    a, b = pq.read_table(tmp_path / "a.parquet").to_pandas(), pq.read_table(tmp_path / "b.parquet").to_pandas()
    assert a["label"].tolist() == b["label"].tolist()
    np.testing.assert_allclose(np.stack(a["probs"]), np.stack(b["probs"]), atol=1e-6)

    # The pool of another task: a clear error, no traceback.
    pd.DataFrame({"id": ["z1", "z2"], "text": ["x", "y"]}).to_parquet(tmp_path / "other.parquet")
    other = [x if x != str(tmp_path / "pool.parquet") else str(tmp_path / "other.parquet") for x in args]
    r = CliRunner().invoke(main, [*other, "--out", str(tmp_path / "c.parquet")])
    assert r.exit_code == 2 and "none of the table's 400 samples" in r.output and "Traceback" not in r.output, r.output


def test_a_bucket_embedded_slower_than_ray_datas_no_progress_guard_is_kept(tmp_path, ray_local, monkeypatch):
    """Ray Data fails an execution in which no block moved for execution_no_progress_timeout_s
    (30 minutes by default); a bucket is embedded whole before the stage outputs anything, and a
    large bucket on a CPU takes longer than that. Here the guard is 1 s and each bucket 3 s more:
    every row is embedded."""
    from ray.data import DataContext

    from molal_ray.config.training import ClassifierConfig
    from molal_ray.pipeline import embeddings
    from molal_ray.testing.tiny_models import build_tiny_bert
    from tests.integration.fakes import SlowEmbedBuckets
    from tests.unit.test_pool_store import _pool

    texts = [f"question number {i} about hamlet" for i in range(40)]
    pool = _pool(tmp_path, [(f"q{i:03d}", t, f"f:{i}") for i, t in enumerate(texts)], buckets=2)
    bert = build_tiny_bert(tmp_path / "bert", texts)
    monkeypatch.setattr(embeddings, "EmbedBuckets", SlowEmbedBuckets)
    ctx = DataContext.get_current()
    saved = ctx.execution_no_progress_timeout_s
    ctx.execution_no_progress_timeout_s = 1.0  # what a new dataset copies
    try:
        store = embeddings.EmbeddingStore.build(
            pool, tmp_path / "emb", ClassifierConfig(mode="head", backbone=str(bert), max_length=16)
        )
    finally:
        ctx.execution_no_progress_timeout_s = saved
    assert store.fetch(pool.keys_of(np.arange(pool.n_usable))).shape[0] == len(texts)
