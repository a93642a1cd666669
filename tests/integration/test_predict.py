"""`molal-ray predict` end to end on a local Ray: predictor actors over a prepared pool, each row
once (a killed run resumed too), and student-first escalation through five replay annotators."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

import molal_ray
from molal_ray.config import LabelJobConfig
from molal_ray.config.predict import PredictJobConfig
from molal_ray.inference.job import run_predict_job
from molal_ray.pipeline.label_job import run_label_job
from molal_ray.pipeline.output import read_annotation_table, read_table
from molal_ray.schema import PREDICTIONS
from tests.conftest import ROOT, TREC, TREC_ANNOTATORS, TREC_LABELS, replay_label_config
from tests.unit.test_predict import _known as write_known

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from molal_ray.testing.tiny_models import build_head_export

    texts = pq.read_table(TREC / "pool.parquet").column("text").to_pylist()[:200]
    return str(build_head_export(tmp_path_factory.mktemp("m") / "model", TREC_LABELS, texts))


def _pool(tmp_path: Path, n: int = 600) -> tuple[Path, list[str]]:
    """The first ``n`` TREC questions, an empty text and a repeated id (its second copy is
    flagged as ``ID#dup1``): (pool, its usable ids)."""
    t = pq.read_table(TREC / "pool.parquet").slice(0, n).to_pylist()
    ids = [r["id"] for r in t]
    t += [{"id": "blank", "text": "  "}, {"id": ids[0], "text": "a second text for the first id"}]
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(t), path)
    return path, ids


def _known(tmp_path: Path, ids: list[str]) -> Path:
    gold = pd.read_csv(TREC / "gold.csv", dtype=str).set_index("sample_id")
    rows = [(i, gold.loc[i, "label"], "gold", 1.0) for i in ids[:30]]
    rows += [(i, "entity", "molal", 0.55) for i in ids[30:35]]
    path = tmp_path / "labels.parquet"
    write_known(path, rows)
    return path


def test_predict_then_escalate_asks_the_llms_only_the_doubtful_rows_once(ray_local, tmp_path, model):
    pool, usable = _pool(tmp_path)
    known = _known(tmp_path, usable)
    label_cfg = tmp_path / "label.yaml"
    # The annotators stay up between this test's escalations (as an operator's application on a
    # cluster would), under a name of their own: deployed once, deleted at the end.
    app = {"keep_serve_running": True, "serve_app_name": "escalation-test"}
    label_cfg.write_text(yaml.safe_dump({**replay_label_config(pool, tmp_path / "unused"), "ray": app}))
    try:
        # The loop's own answers beside its labels.parquet (OUT/annotations): the 30 gold rows,
        # asked by the same annotators (a label job of those rows).
        gold_pool = tmp_path / "gold_pool.parquet"
        pq.write_table(pq.read_table(pool).slice(0, 30), gold_pool)
        loop = {**replay_label_config(gold_pool, tmp_path / "annotations"), "ray": app}
        assert run_label_job(LabelJobConfig.from_dict(loop)).table_rows == 30 * len(TREC_ANNOTATORS)
        _escalate(tmp_path, pool, usable, known, label_cfg, model)
    finally:
        from ray import serve

        serve.delete(app["serve_app_name"])


def _escalate(tmp_path: Path, pool: Path, usable: list[str], known: Path, label_cfg: Path, model: str) -> None:
    def cfg(budget: float | None, people: int = 0) -> PredictJobConfig:
        data = {
            "model": model,
            "pool": {"path": str(pool), "buckets": 4},
            "output": {"path": str(tmp_path / "pred")},
            "known": str(known),
            "predictor": {"batch_size": 64, "concurrency": 1},
        }
        if budget is not None:
            data["escalation"] = {"label_config": str(label_cfg), "budget": budget, "people": people}
        return PredictJobConfig.model_validate(data)

    s = run_predict_job(cfg(None))
    t = read_table(tmp_path / "pred", PREDICTIONS).to_pandas()
    assert len(t) == s.table_rows == s.pool_rows == len(t["sample_id"].unique()) == len(usable) + 2
    assert s.by_source == {"classifier": len(usable) - 35, "flagged": 2, "gold": 30, "molal": 5}
    flagged = t[t["label"].isna()].set_index("sample_id")["error"]
    assert sorted(flagged.index) == ["blank", f"{usable[0]}#dup1"] and flagged["blank"].startswith("empty_text")
    assert (t.loc[t["source"] == "molal", "label"] == "entity").all()

    # 10% of the usable rows escalated: those rows through the five annotators; the 30 gold rows'
    # answers (what the aggregator is fitted on) are the loop's, not asked again.
    s1 = run_predict_job(cfg(0.1))
    assert s1.rows_written_this_run == 0  # the predictions were kept
    e1 = s1.escalation
    n1 = round(0.1 * len(usable))
    assert e1["escalated"] == n1 and e1["people_rows"] == 30
    table = read_annotation_table(tmp_path / "pred" / "escalation")
    asked = set(table.column("sample_id").to_pylist())
    assert table.num_rows == (n1 + 30) * len(TREC_ANNOTATORS)
    assert e1["answers_from_loop"] == 30 * len(TREC_ANNOTATORS) and e1["llm_calls"] == n1 * len(TREC_ANNOTATORS)
    loop_rows = read_annotation_table(tmp_path / "annotations").sort_by(
        [("sample_id", "ascending"), ("annotator", "ascending")]
    )
    copied = table.filter(pc.is_in(table.column("sample_id"), value_set=loop_rows.column("sample_id").unique()))
    assert (
        copied.sort_by([("sample_id", "ascending"), ("annotator", "ascending")])
        .select(["sample_id", "annotator", "probs", "votes"])
        .equals(loop_rows.select(["sample_id", "annotator", "probs", "votes"]))
    )
    clf = t[t["source"] == "classifier"].sort_values("confidence")
    doubtful = set(t.loc[t["sample_id"].isin(asked) & (t["source"] == "classifier"), "sample_id"])
    assert (
        len(doubtful) == n1
        and clf["confidence"].iloc[n1 - 1] <= clf.loc[~clf["sample_id"].isin(doubtful), "confidence"].min()
    )
    final = molal_ray.read_predictions(tmp_path / "pred").to_pandas().set_index("sample_id")
    assert len(final) == len(t) and set(final.index[final["source"] == "mixture"]) == doubtful
    # An escalated row's label: the aggregator (fitted on the gold rows' answers) times the classifier.
    gold = pd.read_csv(TREC / "gold.csv", dtype=str)
    gold_df = gold[gold["sample_id"].isin(usable[:30])]
    mix = molal_ray.aggregate(table, gold_df, labels=TREC_LABELS, method="pooled", validate=False)
    m = mix.table.to_pandas().set_index("sample_id").loc[sorted(doubtful)]
    p = np.stack(m["probs"].to_numpy()) * np.stack(t.set_index("sample_id").loc[sorted(doubtful), "probs"].to_numpy())
    assert final.loc[sorted(doubtful), "label"].tolist() == [TREC_LABELS[i] for i in p.argmax(1)]
    # The rows the classifier kept are untouched.
    rest = t[(t["source"] == "classifier") & ~t["sample_id"].isin(doubtful)].set_index("sample_id")
    assert (final.loc[rest.index, "label"] == rest["label"]).all() and (
        final.loc[rest.index, "source"] == "classifier"
    ).all()

    # A larger budget later asks only the rows not asked yet; the 5 least sure after the mixture
    # go to people, and the command does not wait for them.
    s2 = run_predict_job(cfg(0.2, people=5))
    n2 = round(0.2 * len(usable))
    assert s2.escalation["escalated"] == n2
    assert read_annotation_table(tmp_path / "pred" / "escalation").num_rows == (n2 + 30) * len(TREC_ANNOTATORS)
    assert s2.escalation["llm_calls"] == n2 * len(TREC_ANNOTATORS)
    final2 = molal_ray.read_predictions(tmp_path / "pred").to_pandas()
    assert (final2["source"] == "mixture").sum() == n2 and len(final2) == len(t)
    p = s2.escalation["people"]
    assert p["asked"] == 5 and p["labelled"] == 0 and p["pending"] == 5
    sheet = tmp_path / "pred" / "review" / "escalated.csv"
    rows = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    final3 = molal_ray.read_predictions(tmp_path / "pred").to_pandas().set_index("sample_id")
    mixture = final3[final3["source"] == "mixture"].sort_values("confidence")
    assert set(rows["sample_id"]) == set(mixture.index[:5]) and (rows["label"] == "").all()
    # People label four of them (the fifth left empty: still pending); the same command takes their labels.
    rows.loc[:3, "label"] = "location"
    rows.to_csv(sheet, index=False)
    s4 = run_predict_job(cfg(0.2, people=5))
    assert s4.escalation["people"]["labelled"] == 4 and s4.escalation["people"]["pending"] == 1
    assert s4.escalation["llm_calls"] == s2.escalation["llm_calls"]  # nothing asked of the LLMs again
    final4 = molal_ray.read_predictions(tmp_path / "pred").to_pandas().set_index("sample_id")
    humans = final4[final4["source"] == "human"]
    assert set(humans.index) == set(rows["sample_id"][:4]) and (humans["label"] == "location").all()
    assert (humans["confidence"] == 1.0).all() and (final4["source"] == "mixture").sum() == n2 - 4


@pytest.mark.slow
def test_a_killed_predict_resumes_to_each_row_once_as_an_uninterrupted_run(tmp_path, model):
    """SIGKILL of the driver and its whole local Ray mid-run, then a rerun: every row once, each
    what an uninterrupted run writes."""
    base = pq.read_table(TREC / "pool.parquet").column("text").to_pylist()
    n = 100_000
    pq.write_table(
        pa.table({"id": [f"q{i}" for i in range(n)], "text": [base[i % len(base)] for i in range(n)]}),
        tmp_path / "pool.parquet",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "molal_ray.cli",
        "predict",
        "--model",
        model,
        "--pool",
        str(tmp_path / "pool.parquet"),
        "--known",
        "none",
        "--threads",
        "1",
    ]
    out = tmp_path / "pred"
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        parts = len(list((out / "parts").glob("part-*.parquet"))) if (out / "parts").exists() else 0
        if parts >= 3 or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_table(out, PREDICTIONS).num_rows
    assert 0 < partial < n
    done = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "predictions:" in done.stdout and f"({n} rows;" in done.stdout
    resumed = read_table(out, PREDICTIONS).to_pandas()
    assert len(resumed) == n and resumed["sample_id"].is_unique
    clean = subprocess.run(
        [*cmd, "--out", str(tmp_path / "clean")], env=env, capture_output=True, text=True, timeout=600
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    ref = read_table(tmp_path / "clean", PREDICTIONS).to_pandas().set_index("sample_id").loc[resumed["sample_id"]]
    assert (ref["label"].to_numpy() == resumed["label"].to_numpy()).all()
    np.testing.assert_allclose(ref["confidence"].to_numpy(), resumed["confidence"].to_numpy(), atol=1e-5)


def test_a_model_that_cannot_load_on_a_worker_is_one_line_naming_its_error(ray_local, tmp_path, model):
    import shutil

    from click.testing import CliRunner

    from molal_ray.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "head.safetensors").write_bytes(b"not a safetensors file")  # the card still reads
    pool, _ = _pool(tmp_path, n=50)
    r = CliRunner().invoke(
        main,
        ["predict", "--model", str(broken), "--pool", str(pool), "--out", str(tmp_path / "pred"), "--known", "none"],
    )
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "cannot be loaded on a predictor" in lines[0] and "SafetensorError" in lines[0], r.output
