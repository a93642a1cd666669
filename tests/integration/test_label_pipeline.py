"""Label pools end to end on a local Ray: five replay deployments fed by Ray Data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from molal_ray import schema
from molal_ray.config import LabelJobConfig
from molal_ray.pipeline.label_job import run_label_job
from molal_ray.pipeline.output import read_annotation_table
from molal_ray.storage import resolve
from tests.conftest import (
    ROOT,
    TREC,
    TREC_ANNOTATORS,
    TREC_LABELS,
    assert_rows_are_the_recordings,
    recorded_answers,
    replay_label_config,
)

pytestmark = pytest.mark.ray


def _config(tmp_path: Path, pool: Path, out: Path, latency: float = 0.0, **pipeline) -> dict:
    return replay_label_config(pool, out, latency=latency, **{"batch_size": 64, **pipeline})


def _table_dict(out: Path) -> dict[tuple[str, str], dict]:
    rows = read_annotation_table(out).to_pylist()
    keys = [(r["sample_id"], r["annotator"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (sample, annotator) pair was written twice"
    return dict(zip(keys, rows))


def test_trec_subset_matches_the_recording_row_by_row(ray_local, tmp_path, monkeypatch):
    from molal_ray.pipeline import output

    monkeypatch.setattr(output, "LOCAL_COMPACT_BYTES", 0)  # compacted by Ray tasks, as a large output is
    pool = pq.read_table(TREC / "pool.parquet").slice(0, 400)
    pq.write_table(pool, tmp_path / "pool.parquet")
    cfg = LabelJobConfig.from_dict(_config(tmp_path, tmp_path / "pool.parquet", tmp_path / "out"))
    seen = []
    summary = run_label_job(cfg, progress=lambda w, n: seen.append((dict(w), n)))
    table = _table_dict(tmp_path / "out")
    expected = recorded_answers(pool.column("id").to_pylist())
    assert set(table) == set(expected) and len(table) == 400 * 5
    for key, (probs, votes, n_inv) in expected.items():
        row = table[key]
        assert row["error"] is None
        np.testing.assert_allclose(row["probs"], probs, atol=1e-6)
        np.testing.assert_allclose(row["votes"], votes, atol=1e-6)
        assert row["n_invalid"] == n_inv and row["n_samples"] == 10
    assert summary.table_rows == 2000 and summary.pool_rows == 400 and not summary.errors_by_kind
    assert summary.annotators["mistral"].invalid_vote_rate > 0
    assert seen[-1] == ({n: 400 for n in TREC_ANNOTATORS}, 400)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["table_rows"] == 2000
    parts = resolve(tmp_path / "out").join("parts")
    assert not parts.list(prefix="part-") and parts.list(prefix="data-")  # every bucket's parts merged


def test_a_block_slower_than_ray_datas_no_progress_guard_is_labelled_whole(ray_local, tmp_path, monkeypatch):
    """Ray Data fails an execution in which no block moved for execution_no_progress_timeout_s
    (30 minutes by default); the annotate stage outputs nothing until its block is labelled, and
    one block of slow annotators takes longer than that. Here the guard is 2 s for the datasets
    made from the annotate step on (the pool is prepared first, under the default) and the one
    block takes about 8 s (4 serial calls of 2 s per annotator): the job labels every pair."""
    from ray.data import DataContext

    from molal_ray.pipeline import label_job

    ctx = DataContext.get_current()
    saved = ctx.execution_no_progress_timeout_s
    real = label_job.annotate_dataset

    def with_tight_guard(*args, **kwargs):  # type: ignore[no-untyped-def]
        ctx.execution_no_progress_timeout_s = 2.0  # what a new dataset copies
        return real(*args, **kwargs)

    monkeypatch.setattr(label_job, "annotate_dataset", with_tight_guard)
    pool = pq.read_table(TREC / "pool.parquet").slice(0, 64)
    pq.write_table(pool, tmp_path / "pool.parquet")
    data = _config(tmp_path, tmp_path / "pool.parquet", tmp_path / "out", 0.125, batch_size=16, in_flight=1)
    try:
        summary = run_label_job(LabelJobConfig.from_dict(data))
    finally:
        ctx.execution_no_progress_timeout_s = saved
    assert summary.annotate_s > 6.0, "the block was not slower than the guard: the test proves nothing"
    assert len(_table_dict(tmp_path / "out")) == 64 * 5


def test_bad_input_rows_are_flagged_and_counted(ray_local, tmp_path):
    good = pq.read_table(TREC / "pool.parquet").slice(0, 30).to_pylist()
    lines = [json.dumps(r).encode() for r in good]
    lines += [
        json.dumps({"id": "empty", "text": "  "}).encode(),
        json.dumps({"id": "null", "text": None}).encode(),
        b'{"id": "latin1", "text": "caf\xe9"}',
        json.dumps({"text": "who has no id?"}).encode(),
        json.dumps({"id": good[0]["id"], "text": "a second row with the first row's id"}).encode(),
        json.dumps({"id": "not-recorded", "text": "a question the recording never saw"}).encode(),
        json.dumps({"id": good[1]["id"] + "-long", "text": "x" * 5000}).encode(),
        b"{broken json",
    ]
    (tmp_path / "pool.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    data = _config(tmp_path, tmp_path / "pool.jsonl", tmp_path / "out")
    data["pool"]["max_text_chars"] = 1000
    summary = run_label_job(LabelJobConfig.from_dict(data))
    table = _table_dict(tmp_path / "out")
    n_rows = len(lines)
    assert len(table) == n_rows * 5  # nothing dropped
    kinds = {sid: schema.error_kind(r["error"]) for (sid, a), r in table.items() if a == "yi"}
    assert kinds["empty"] == kinds["null"] == "empty_text"
    assert kinds["latin1"] == "invalid_utf8"
    assert kinds["missing_id:pool.jsonl:34"] == "missing_id"
    assert kinds[f"{good[0]['id']}#dup1"] == "duplicate_id" and kinds[good[0]["id"]] is None
    assert kinds["not-recorded"] == "unknown_sample"
    assert kinds["missing_id:pool.jsonl:38"] == "bad_json"  # an unreadable line keeps its place
    long = table[(good[1]["id"] + "-long", "yi")]
    assert long["error"] == "unknown_sample: 'trec-00001-long' is not in the recording"
    assert long["warning"].startswith("truncated")
    assert summary.errors_by_kind == {
        "empty_text": 10,
        "invalid_utf8": 5,
        "missing_id": 5,
        "duplicate_id": 5,
        "unknown_sample": 10,
        "bad_json": 5,
    }
    assert summary.warnings_by_kind == {"truncated": 5}


def test_an_annotator_that_dies_loses_no_row(ray_local, tmp_path):
    pool = pq.read_table(TREC / "pool.parquet").slice(0, 200)
    pq.write_table(pool, tmp_path / "pool.parquet")
    die_dir = tmp_path / "die"
    die_dir.mkdir()
    data = _config(tmp_path, tmp_path / "pool.parquet", tmp_path / "out", max_retries=8, retry_backoff_s=0.5)
    data["annotators"][3]["resources"]["num_replicas"] = 2
    summary = run_label_job(LabelJobConfig.from_dict(data), engine_cls=_env_engine(die_dir))
    assert (die_dir / "died-qwen").exists(), "the replica did not die: the test proves nothing"
    table = _table_dict(tmp_path / "out")
    assert len(table) == 200 * 5
    assert all(r["error"] is None for r in table.values())
    assert summary.annotators["qwen"].rows == 200


def _env_engine(die_dir: Path):
    """The dying engine, with its settings baked in (replicas do not share the driver's env)."""
    from tests.integration import fakes

    class Engine(fakes.DyingOnceReplayEngine):
        async def annotate(self, sample_ids, texts):  # type: ignore[no-untyped-def]
            os.environ["MOLAL_TEST_DIE_DIR"] = str(die_dir)
            os.environ["MOLAL_TEST_DIE_ANNOTATOR"] = "qwen"
            return await super().annotate(sample_ids, texts)

    return Engine


@pytest.mark.slow
def test_killed_run_resumes_to_exactly_the_rows_of_an_uninterrupted_run(tmp_path):
    """A driver killed with SIGKILL (with its whole local Ray) and started again finishes with
    every pair exactly once, each what the recording says."""
    pool = TREC / "pool.parquet"
    cfg_path = tmp_path / "label.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(tmp_path, pool, tmp_path / "out", latency=0.002)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "molal_ray.cli", "label", str(cfg_path)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "out" / "parts"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        n = len(list(parts.glob("part-*.parquet"))) if parts.exists() else 0
        if n >= 10 or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(read_annotation_table(tmp_path / "out"))
    assert 0 < partial < 5452 * 5
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Every pair once, each what the recording says (what an uninterrupted run writes).
    assert_rows_are_the_recordings(_table_dict(tmp_path / "out"), pq.read_table(pool).column("id").to_pylist())


def test_a_cascade_ranked_on_gold_rows_asks_the_best_first(ray_local, tmp_path):
    """``cascade.order: gold``: every annotator labels the gold rows, the stages are refilled by
    accuracy there, the rest of the pool goes through them; aggregation sees the gold rows as
    the cascade would have left them."""
    import pandas as pd

    from molal_ray.aggregation import build_matrix
    from molal_ray.aggregation.api import aggregate, load_gold
    from molal_ray.pipeline.output import read_cascade

    pool = pq.read_table(TREC / "pool.parquet").slice(0, 300)
    pq.write_table(pool, tmp_path / "pool.parquet")
    ids = pool.column("id").to_pylist()
    gold_all = pd.read_csv(TREC / "gold.csv").set_index("sample_id")
    gold = gold_all.loc[ids[:40]].reset_index()
    pd.concat([gold, pd.DataFrame({"sample_id": ["not-in-the-pool"], "label": ["human"]})]).to_csv(
        tmp_path / "gold.csv", index=False
    )
    data = _config(tmp_path, tmp_path / "pool.parquet", tmp_path / "out")
    data["cascade"] = {
        "stages": [["gemma", "llama"], ["mistral", "qwen", "yi"]],
        "order": "gold",
        "gold": str(tmp_path / "gold.csv"),
    }
    summary = run_label_job(LabelJobConfig.from_dict(data))
    plan = read_cascade(tmp_path / "out")
    assert plan is not None and plan == summary.cascade and plan["gold_rows"] == 40
    assert summary.rows_written_this_run == summary.table_rows  # the ranking's rows counted too
    m = build_matrix(read_annotation_table(tmp_path / "out"), 6, sample_ids=np.asarray(ids, dtype=object))
    y = np.array([TREC_LABELS.index(label) for label in gold["label"]])
    acc = {a: float((m.votes[:40, j].argmax(1) == y).mean()) for j, a in enumerate(m.annotators)}
    assert plan["accuracy_on_gold"] == pytest.approx(acc)
    first = plan["stages"][0]
    assert sorted(acc.values())[-2:] == sorted(acc[a] for a in first)  # the two most accurate first
    assert m.present[:40].all()  # every annotator on the gold rows
    cols = [m.annotators.index(a) for a in first]
    v = m.votes[40:][:, cols]
    share = v.max(2) / np.maximum(v.sum(2), 1e-12)
    sure = (v.argmax(2) == v.argmax(2)[:, :1]).all(1) & (share >= 0.8).all(1)
    assert 0 < sure.sum() < 260 and (m.present[40:].sum(1) == np.where(sure, 2, 5)).all()
    assert summary.llm_calls_per_text == pytest.approx((40 * 5 + 260 * 2 + 3 * int((~sure).sum())) / 300, abs=1e-4)
    # A resumed run keeps the ranking and asks nothing again (through the public API, from a YAML file).
    import yaml

    import molal_ray

    (tmp_path / "label.yaml").write_text(yaml.safe_dump(data))
    again = molal_ray.label(tmp_path / "label.yaml")
    assert again.rows_written_this_run == 0 and read_cascade(tmp_path / "out") == plan
    assert molal_ray.read_annotations(tmp_path / "out").num_rows == summary.table_rows
    # molal-ray aggregate reads the plan: the gold rows' later-stage answers are hidden where stage one settled.
    res = aggregate(
        read_annotation_table(tmp_path / "out"),
        load_gold(tmp_path / "gold.csv", TREC_LABELS),
        TREC_LABELS,
        validate=False,
        cascade=plan,
    )
    g = m.votes[:40][:, cols]
    g_sure = (g.argmax(2) == g.argmax(2)[:, :1]).all(1) & (g.max(2) / np.maximum(g.sum(2), 1e-12) >= 0.8).all(1)
    assert res.report["cascade"]["answers_hidden"] == 3 * int(g_sure.sum()) > 0


def test_a_small_pool_prepared_in_the_driver_gives_ray_datas_files(ray_local, tmp_path, monkeypatch):
    # Two files of a folder, an id repeated across them, flagged rows of several kinds, 3 buckets:
    # the in-process preparation of a small pool writes what Ray Data's tasks write, byte for byte.
    from molal_ray.config import PoolConfig
    from molal_ray.pipeline import pool_store

    good = pq.read_table(TREC / "pool.parquet").slice(0, 200).to_pylist()
    (tmp_path / "pool").mkdir()
    first = [json.dumps(r).encode() for r in good[:120]] + [b'{"id": "empty", "text": " "}', b"{broken"]
    second = [json.dumps(r).encode() for r in good[100:]] + [b'{"id": "latin1", "text": "caf\xe9"}', b'{"text": "x"}']
    (tmp_path / "pool" / "a.jsonl").write_bytes(b"\n".join(first) + b"\n")
    (tmp_path / "pool" / "b.jsonl").write_bytes(b"\n".join(second) + b"\n")
    cfg = PoolConfig(path=str(tmp_path / "pool"), buckets=3)
    here = pool_store.PreparedPool.build(cfg, tmp_path / "here")
    monkeypatch.setattr(pool_store, "LOCAL_PREPARE_BYTES", 0)
    ray = pool_store.PreparedPool.build(cfg, tmp_path / "ray")
    assert here.manifest == ray.manifest and here.n_flagged == 2 + 2 + 20  # 20 ids repeated across the files
    assert sorted(here.manifest.flagged_by_kind) == [
        "bad_json",
        "duplicate_id",
        "empty_text",
        "invalid_utf8",
        "missing_id",
    ]
    for kind in ("bucket", "flagged"):
        for a, b in zip(here.files(kind), ray.files(kind), strict=True):
            assert a.read_parquet().equals(b.read_parquet()), a.path
