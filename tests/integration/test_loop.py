"""The whole loop on a local Ray: replay annotators, the aggregator, a tiny classifier on Ray Train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from molal_ray.config.loop import LoopJobConfig
from molal_ray.exceptions import ConfigError
from molal_ray.loop.runner import run_loop
from molal_ray.loop.state import LoopState
from tests.conftest import TREC, TREC_ANNOTATORS, TREC_LABELS

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from molal_ray.testing.tiny_models import build_tiny_bert

    root = tmp_path_factory.mktemp("loop")
    pool = pq.read_table(TREC / "pool.parquet").slice(0, 400)
    pq.write_table(pool, root / "pool.parquet")
    backbone = build_tiny_bert(root / "bert", pool.column("text").to_pylist())
    return root, backbone


HEAD = {"mode": "head", "epochs": 30, "patience": 5, "learning_rate": 1e-2}


def _cfg(root, backbone, out, rounds=2, trainer="ray", classifier=None, task=None, **loop):
    return LoopJobConfig.from_dict(
        {
            "task": {"labels": TREC_LABELS, **(task or {})},
            "annotators": [
                {
                    "name": n,
                    "engine": {"type": "replay", "path": str(TREC / "recording.parquet")},
                    "resources": {"num_cpus": 0.1},
                }
                for n in TREC_ANNOTATORS
            ],
            "pool": {"path": str(root / "pool.parquet")},
            "gold": str(TREC / "gold.csv"),
            "loop": {
                "initial_gold": 20,
                "rounds": rounds,
                "query_size": 20,
                "strategy": "max-entropy",
                "subsample": 150,
                "test_fraction": 0.25,
                "test_max": 80,
                **loop,
            },
            "classifier": {
                "backbone": str(backbone),
                "epochs": 2,
                "batch_size": 16,
                "learning_rate": 3e-3,
                "cpus_per_worker": 0.5,
                "trainer": trainer,
                **(classifier or {}),
            },
            "output": {"path": str(out)},
        }
    )


def test_two_rounds_end_to_end_then_resume(ray_local, setup, tmp_path):
    """Head mode on Ray Train: the pool is embedded once; every round's head is a checkpoint of
    the same Ray Train run; a resumed loop keeps the finished rounds, reuses the embeddings and
    starts a new run. (Full fine-tuning runs in the loop in test_s3 and test_job_submission.)
    Few-shot examples from the loop's labels travel with every call (replay engines ignore them;
    tests/unit/test_few_shot.py checks that a prompt engine uses them)."""
    from molal_ray.pipeline.embeddings import EMBEDDING
    from molal_ray.pipeline.output import read_annotation_table
    from molal_ray.pipeline.pool_store import MANIFEST

    root, backbone = setup
    out = tmp_path / "run"
    few = {"few_shot": {"examples": "loop", "k": 2, "select": "fixed"}}
    # the first run scores through Ray Data tasks (score_here_rows 0), the resumed one in the
    # coordinator (a pool this small is under the default threshold): both paths run
    first = run_loop(_cfg(root, backbone, out, rounds=1, classifier={**HEAD, "score_here_rows": 0}, task=few))
    assert [r["n_labeled"] for r in first["rounds"]] == [20, 40]
    (store,) = [p for p in (tmp_path / "_embeddings").iterdir() if p.is_dir()]  # beside the output, shared
    emb_manifest = store / MANIFEST
    stamp = emb_manifest.stat().st_mtime_ns
    files = sorted(store.glob("embed-*.parquet"))
    assert files and sum(pq.read_metadata(f).num_rows for f in files) == 400
    assert pq.read_schema(files[0]).field(EMBEDDING).type.list_size == 32  # the tiny BERT's width
    dirs = [h["model_dir"] for h in LoopState.load(str(out / "state")).history]
    assert [d.rsplit("/", 1)[1] for d in dirs] == ["round-0", "round-1"]
    assert len({d.rsplit("/", 1)[0] for d in dirs}) == 1  # one Ray Train run served both rounds
    for d in dirs:
        assert (Path(d) / "head.pt").is_file() and json.loads((Path(d) / "head.json").read_text())["dim"] == 32
    with pytest.raises(ConfigError, match="holds a loop already"):
        run_loop(_cfg(root, backbone, out, rounds=2, classifier=HEAD, task=few))
    report = run_loop(_cfg(root, backbone, out, rounds=2, classifier=HEAD, task=few), resume=True)
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and [r["n_labeled"] for r in rounds] == [20, 40, 60]
    assert rounds[:2] == first["rounds"]  # finished rounds are kept as they were
    assert emb_manifest.stat().st_mtime_ns == stamp  # reused, not recomputed
    for r in rounds:
        for k in ("test_accuracy", "test_micro_f1", "test_macro_f1"):
            assert 0.0 <= r[k] <= 1.0
    assert rounds[0]["annotation_accuracy"] is None and 0.3 < rounds[2]["annotation_accuracy"] <= 1.0
    assert all(r["text_view_rows"] > 0 for r in rounds[1:])  # the default aggregator read the pool's embeddings
    assert json.loads((out / "report.json").read_text())["rounds"] == rounds
    assert (out / "curves.png").stat().st_size > 0 and "| round |" in (out / "summary.md").read_text()
    html = (out / "report.html").read_text()
    for figure in ("learning curve", "labels received", "annotators", "confusion", "phases"):
        assert f"<img alt='{figure}' src='data:image/png;base64," in html
    assert set(report["gold"]["annotators"]) == set(TREC_ANNOTATORS)
    assert report["gold"]["assigned"]["rows"] > 0 and len(report["gold"]["assigned"]["confusion"]) == 6
    state = LoopState.load(out / "state")
    ids = [x.sample_id for x in state.labeled]
    assert len(ids) == len(set(ids)) == 60 and len({x.row for x in state.labeled}) == 60
    assert {x.source for x in state.labeled} == {"gold", "molal"}
    molal = [x for x in state.labeled if x.source == "molal"]
    assert any(x.negatives for x in molal)  # implicit negative labels travel with their rows
    assert all(x.weight in (1.0, 0.5) for x in molal)
    # every queried sample was annotated exactly once by every annotator
    table = read_annotation_table(out / "annotations")
    t = table.to_pandas()
    assert len(t) == len(t.drop_duplicates(["sample_id", "annotator"])) == 60 * 5
    # The text view's weight is chosen each round on the labelled rows and said in the report and log.
    for r in rounds[1:]:
        tv = r["text_view"]
        assert tv["trained"] and tv["weight"] in tv["choice"]["exponents"] and len(tv["choice"]["held_out_nll"]) > 1
    assert "chosen on 20 gold rows out of fold" in (out / "summary.md").read_text()
    # The loop uses what `aggregate` would: the last round's table, the loop's people's labels and
    # the pool's embeddings give the labels the loop assigned to that round's queries.
    import molal_ray
    from molal_ray.pipeline.embeddings import as_matrix

    emb = pq.read_table(files, columns=["sample_id", EMBEDDING])
    people = [x for x in state.labeled if x.source == "gold"]
    gold_df = pd.DataFrame(
        {"sample_id": [x.sample_id for x in people], "label": [TREC_LABELS[x.label] for x in people]}
    )
    res = molal_ray.aggregate(
        table,
        gold_df,
        TREC_LABELS,
        embeddings=(np.asarray(emb.column("sample_id").to_pylist(), dtype=object), as_matrix(emb.column(EMBEDDING))),
        validate=False,
    )
    again = dict(zip(res.table.column("sample_id").to_pylist(), res.table.column("label").to_pylist()))
    last = state.labeled[-20:]  # round 2's queries, labelled by the aggregator fitted on this table
    assert [again[x.sample_id] for x in last] == [TREC_LABELS[x.label] for x in last]
    assert res.report["text_view"]["weight"] == rounds[2]["text_view"]["weight"]
    # The loop's products: the last round's classifier, portable (the tiny encoder copied in), and
    # every labelled row with its source.
    clf = molal_ray.load_classifier(out / "model")
    assert clf.labels == TREC_LABELS and (out / "model" / "encoder" / "config.json").is_file()
    texts = pq.read_table(root / "pool.parquet").column("text").to_pylist()[:4]
    assert len(clf.predict(texts)) == 4
    labels = pq.read_table(out / "labels.parquet").to_pandas()
    assert len(labels) == 60 and labels["round"].tolist() == [0] * 20 + [1] * 20 + [2] * 20
    assert set(labels["source"]) == {"gold", "molal"} and labels["confidence"].notna().all()


@pytest.mark.parametrize("strategy", ["coreset", "noise-stability", "bemps"])
def test_model_based_strategies_run_in_the_loop(ray_local, setup, tmp_path, strategy):
    """Strategies that need embeddings (CoreSet: also the labelled rows') or weight-noise copies
    get them from the one prediction pass per model, in the straight run and (CoreSet, whose
    labelled rows' embeddings must be scored again) after a resume."""
    root, backbone = setup
    out = tmp_path / strategy
    report = run_loop(_cfg(root, backbone, out, rounds=1, trainer="local", strategy=strategy, noise_copies=2))
    if strategy == "coreset":
        report = run_loop(
            _cfg(root, backbone, out, rounds=2, trainer="local", strategy=strategy, noise_copies=2), resume=True
        )
    n = 20 * len(report["rounds"])
    assert [r["n_labeled"] for r in report["rounds"]] == list(range(20, n + 1, 20))
    state = LoopState.load(out / "state")
    assert len({x.sample_id for x in state.labeled}) == n


def test_gold_mode_needs_no_annotator_and_flagged_rows_stay_out(ray_local, setup, tmp_path, caplog):
    """Also: a round that finds fewer unlabelled rows than query_size says so (400 rows: 80 test,
    20 initial, so round 1 gets 300 of the 400 asked)."""
    import logging

    import pyarrow as pa

    root, backbone = setup
    pool = pq.read_table(root / "pool.parquet")
    ids = pool.column("id").to_pylist()
    bad = pa.table({"id": [ids[0], "empty-one", None], "text": ["a second row with the first id", "", "no id"]})
    pq.write_table(pa.concat_tables([pool, bad.cast(pool.schema)]), tmp_path / "pool.parquet")
    cfg = _cfg(
        root,
        backbone,
        tmp_path / "gold",
        rounds=1,
        trainer="local",  # Ray Train fine-tunes in the loop in test_s3, test_job_submission, test_multinode
        annotation="gold",
        strategy="random",
        query_size=400,
        subsample=None,
    )
    cfg = cfg.model_copy(update={"pool": cfg.pool.model_copy(update={"path": str(tmp_path / "pool.parquet")})})
    with caplog.at_level(logging.WARNING, logger="molal_ray"):
        report = run_loop(cfg)
    assert report["rounds"][1]["annotation_accuracy"] == 1.0
    assert [r["n_labeled"] for r in report["rounds"]] == [20, 320]
    assert any("round 1 queried 300 rows, fewer than loop.query_size (400)" in r.message for r in caplog.records)
    assert not (tmp_path / "gold" / "annotations").exists()
    assert report["pool_rows"] == pool.num_rows and report["pool_rows_flagged"] == 3
    flagged = pq.read_table(tmp_path / "gold" / "pool_flagged.parquet").to_pandas()
    assert sorted(e.split(":")[0] for e in flagged["pool_error"]) == ["duplicate_id", "empty_text", "missing_id"]


def test_bad_loop_settings_are_config_errors(setup, tmp_path):
    root, backbone = setup
    with pytest.raises(ConfigError, match="loop.annotation one of"):
        _cfg(root, backbone, tmp_path, annotation="gpt4")
    with pytest.raises(ConfigError, match="loop.strategy one of"):
        _cfg(root, backbone, tmp_path, strategy="oracle")


@pytest.mark.slow
def test_a_killed_loop_resumes_to_the_rounds_of_an_uninterrupted_one(setup, tmp_path):
    """The whole loop (driver, coordinator actor, local Ray) killed with SIGKILL once its first
    round is saved, then run again with --resume: every round, and the labelled rows in their order,
    equal an uninterrupted run's (local trainer: deterministic on the CPU)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from tests.conftest import ROOT

    root, backbone = setup
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)

    def config(out):
        data = _cfg(root, backbone, out, rounds=2, trainer="local").model_dump(mode="json")
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "molal_ray.cli", "run", str(config(killed))]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "state" / "state.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["round"] >= 1:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the loop ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(state.read_text())["round"] == 1
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    straight = tmp_path / "straight"
    ref = subprocess.run(
        [sys.executable, "-m", "molal_ray.cli", "run", str(config(straight))],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    a = json.loads((killed / "report.json").read_text())["rounds"]
    b = json.loads((straight / "report.json").read_text())["rounds"]
    assert [r["round"] for r in a] == [0, 1, 2]
    for x, y in zip(a, b, strict=True):
        assert x["n_labeled"] == y["n_labeled"] and x["annotation_accuracy"] == y["annotation_accuracy"]
        assert x["test_accuracy"] == pytest.approx(y["test_accuracy"], abs=1e-9)
    assert [r.sample_id for r in LoopState.load(killed / "state").labeled] == [
        r.sample_id for r in LoopState.load(straight / "state").labeled
    ]
    from molal_ray.pipeline.output import read_annotation_table

    t = read_annotation_table(killed / "annotations").to_pandas()
    assert len(t) == len(t.drop_duplicates(["sample_id", "annotator"])) == 60 * 5


def test_a_loop_waits_for_people_in_label_studio_and_pauses_when_it_stops(
    ray_local, setup, label_studio, tmp_path, monkeypatch
):
    """Two rounds route 4 samples each to people in Label Studio. Round 1: a reviewer labels them
    while the loop waits. Round 2: the server stops while the loop waits; the loop pauses with
    nothing of the round saved, and --resume finishes once the server is back and labelled."""
    import threading
    import time

    import pandas as pd

    from molal_ray.exceptions import ReviewPending

    server = label_studio
    monkeypatch.setenv("MOLAL_TEST_LS_TOKEN", server.access_token)
    root, backbone = setup
    ids = pq.read_table(root / "pool.parquet").column("id").to_pylist()
    full = pd.read_csv(TREC / "gold.csv", dtype=str)
    full[full.sample_id.isin(ids[:120])].to_csv(tmp_path / "gold.csv", index=False)  # initial + test rows only
    truth = dict(zip(full.sample_id, full.label))
    out = tmp_path / "run"
    # The local trainer: Ray Train's head mode runs in test_two_rounds_end_to_end_then_resume.
    c = _cfg(root, backbone, out, rounds=2, trainer="local", classifier=HEAD, human_per_round=4).model_dump(mode="json")
    c["gold"] = str(tmp_path / "gold.csv")
    c["review"] = {
        "backend": "label_studio",
        "url": server.url,
        "project": "loop",
        "token_env": "MOLAL_TEST_LS_TOKEN",
        "poll_s": 0.5,
        "wait_s": 300,
    }
    cfg = LoopJobConfig.from_dict(c)

    stop = threading.Event()
    seen: dict[str, list[str]] = {}

    def reviewer() -> None:  # labels round 1's tasks; stops the server when round 2's arrive
        while not stop.is_set():
            pid = server.project_id("loop") if server.proc is not None else None
            for t in server.tasks(pid) if pid is not None else []:
                batch = t["data"]["batch"]
                seen.setdefault(batch, [])
                if t["data"]["sample_id"] not in seen[batch]:
                    seen[batch].append(t["data"]["sample_id"])
                if batch == "round-1" and not t["annotations"]:
                    server.annotate(t["id"], truth[t["data"]["sample_id"]])
                elif batch == "round-2" and len(seen[batch]) == 4:
                    server.stop()
                    return
            time.sleep(0.3)

    thread = threading.Thread(target=reviewer, daemon=True)
    thread.start()
    try:
        with pytest.raises(ReviewPending) as err:
            run_loop(cfg)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert err.value.round == 2 and "cannot reach it" in str(err.value), str(err.value)
    state = LoopState.load(str(out / "state"))
    assert state.round == 2  # round 1 finished and saved; nothing of round 2
    human = {x.sample_id: state.labels[x.label] for x in state.labeled if x.source == "human"}
    assert human == {i: truth[i] for i in seen["round-1"]} and len(human) == 4

    server.start()  # back; a reviewer labels round 2 (one of them skipped)
    pid = server.project_id("loop")
    round2 = [t for t in server.tasks(pid) if t["data"]["batch"] == "round-2"]
    assert sorted(t["data"]["sample_id"] for t in round2) == sorted(seen["round-2"])
    for k, t in enumerate(round2):
        server.annotate(t["id"], None if k == 0 else truth[t["data"]["sample_id"]])
    report = run_loop(cfg, resume=True)
    assert [r["n_human"] for r in report["rounds"]] == [20, 4, 3]  # the skipped one kept the mixture's label
    assert len(server.tasks(pid)) == 8  # pushed again on resume: no duplicate
    state = LoopState.load(str(out / "state"))
    human = {x.sample_id: state.labels[x.label] for x in state.labeled if x.source == "human"}
    assert human == {i: truth[i] for i in seen["round-1"] + [t["data"]["sample_id"] for t in round2[1:]]}
    agreed = [r["people_agreement"] for r in report["rounds"][1:]]
    assert [a["n"] for a in agreed] == [4, 3] and all(0 <= a["mixture"] <= 1 for a in agreed)
    assert set(agreed[0]["annotators"]) == {a["name"] for a in c["annotators"]}
    html = (out / "report.html").read_text()
    assert "People against the mixture and each LLM" in html
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".html", ".csv", ".log")]
    assert written and not any(server.access_token in p.read_text(errors="replace") for p in written)


def test_an_error_in_the_coordinators_constructor_reaches_the_driver_as_itself(ray_local, tmp_path):
    # The actor's constructor finds no prepared pool: the driver gets that SchemaError, not an
    # ActorDiedError with the cause in its text.
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.exceptions import SchemaError
    from molal_ray.loop.runner import run_rounds
    from tests.conftest import TREC

    data = yaml.safe_load((TREC / "loop.yaml").read_text())
    data["output"] = {"path": str(tmp_path / "empty")}
    cfg = LoopJobConfig.from_dict(data, base_dir=TREC)
    with pytest.raises(SchemaError, match="no prepared pool"):
        run_rounds(cfg, False, None, lambda r, p: None)
