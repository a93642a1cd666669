"""People through a running Label Studio (a real server on 127.0.0.1, started by the tests):
push, a reviewer's annotations through its API, pull; a project whose config does not fit;
a loop whose rounds wait on it, with the server stopped while it waits."""

from __future__ import annotations

import csv

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from molal_ray.cli import main

LABELS = ["l0", "l1", "l2", "l3", "l4", "l5"]


@pytest.fixture
def aggregated(tmp_path):
    """An aggregation of 300 synthetic samples (40 gold), their texts and annotation table."""
    from molal_ray.aggregation import aggregate, load_gold
    from molal_ray.testing.synthetic import synthetic_table

    table, truth = synthetic_table(300, seed=5)
    pq.write_table(table, tmp_path / "ann.parquet")
    ids = [f"s{i:08d}" for i in range(300)]
    pd.DataFrame({"sample_id": ids[:40], "label": [LABELS[k] for k in truth[:40]]}).to_csv(
        tmp_path / "gold.csv", index=False
    )
    res = aggregate(table, load_gold(tmp_path / "gold.csv", LABELS), LABELS, validate=False)
    pq.write_table(res.table, tmp_path / "agg.parquet")
    pd.DataFrame({"id": ids, "text": [f"=question {i}?" for i in range(300)]}).to_parquet(tmp_path / "pool.parquet")
    return tmp_path, dict(zip(ids, (LABELS[k] for k in truth)))


def _push(root, server, project, token_env="MOLAL_TEST_LS_TOKEN", n=8):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(
        main,
        [
            "review",
            "push",
            "--aggregated",
            str(root / "agg.parquet"),
            "--labels",
            ",".join(LABELS),
            "--texts",
            str(root / "pool.parquet"),
            "--n",
            str(n),
            "--annotations",
            str(root / "ann.parquet"),
            "--url",
            server.url,
            "--project",
            project,
            "--token-env",
            token_env,
        ],
    )


def test_push_review_and_pull(label_studio, aggregated, monkeypatch):
    root, truth = aggregated
    server = label_studio
    monkeypatch.setenv("MOLAL_TEST_LS_TOKEN", server.access_token)  # a personal access token
    r = _push(root, server, "push-pull")
    assert r.exit_code == 0, r.output
    pid = server.project_id("push-pull")
    assert f"8 new tasks (0 already there) in {server.url}/projects/{pid}" in r.output
    tasks = server.tasks(pid)
    agg = pq.read_table(root / "agg.parquet").to_pandas().set_index("sample_id")
    assert len(tasks) == 8 and not any(agg.loc[t["data"]["sample_id"], "is_gold"] for t in tasks)
    for t in tasks:  # the mixture's label as a prediction with its confidence, each LLM's answer shown
        row = agg.loc[t["data"]["sample_id"]]
        pred = t["predictions"][0]
        assert pred["result"][0]["value"]["choices"] == [row.label]
        assert pred["score"] == pytest.approx(row.confidence, abs=1e-4)
        assert t["data"]["text"].startswith("=question") and t["data"]["llm_answers"].count("% of its answers") >= 1
    assert server.access_token not in (r.output + str(tasks))
    # pushed again (with more): only the new samples become tasks
    r = _push(root, server, "push-pull", n=10)
    assert r.exit_code == 0 and "2 new tasks (8 already there)" in r.output, r.output
    tasks = server.tasks(pid)
    assert len(tasks) == 10 and len({t["data"]["sample_id"] for t in tasks}) == 10

    # a reviewer confirms some, changes some (one twice: the latest counts), skips one
    by_id = {t["data"]["sample_id"]: t for t in tasks}
    ids = sorted(by_id)
    want = {}
    for k, sid in enumerate(ids[:9]):
        suggested = by_id[sid]["predictions"][0]["result"][0]["value"]["choices"][0]
        want[sid] = suggested if k % 2 == 0 else next(lab for lab in LABELS if lab != suggested)
        server.annotate(by_id[sid]["id"], want[sid])
    server.annotate(by_id[ids[1]]["id"], "l5")  # changed again, later
    want[ids[1]] = "l5"
    server.annotate(by_id[ids[9]]["id"], None)  # skipped
    out = root / "reviewed.csv"
    r = CliRunner().invoke(
        main,
        [
            "review",
            "pull",
            "--url",
            server.url,
            "--project",
            "push-pull",
            "--labels",
            ",".join(LABELS),
            "--token-env",
            "MOLAL_TEST_LS_TOKEN",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0 and "9 reviewed labels of 10 tasks (1 skipped)" in r.output, r.output
    got = {row["sample_id"]: row["label"] for row in csv.DictReader(out.open())}
    assert got == want

    # a reviewer's label outside the label set (made through the API): nothing is written
    out.unlink()
    server.annotate(by_id[ids[0]]["id"], "not-a-label")
    r = CliRunner().invoke(
        main,
        [
            "review",
            "pull",
            "--url",
            server.url,
            "--project",
            str(pid),
            "--labels",
            ",".join(LABELS),
            "--token-env",
            "MOLAL_TEST_LS_TOKEN",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 2 and "not in the label set (first: 'not-a-label'" in r.output and not out.exists()


def test_server_mistakes_are_one_line(label_studio, aggregated, monkeypatch):
    root, _ = aggregated
    server = label_studio
    monkeypatch.setenv("MOLAL_TEST_LS_TOKEN", server.access_token)
    from molal_ray.review import labelstudio_config

    other = labelstudio_config(["yes", "no"])
    server.api("POST", "/api/projects", json={"title": "other labels", "label_config": other})
    cases = [
        (("other labels", "MOLAL_TEST_LS_TOKEN"), "its labeling config's choices differ from the task's labels"),
        (
            ("push-pull-none", "MOLAL_TEST_NO_SUCH_VAR"),
            "review.token_env: the environment variable 'MOLAL_TEST_NO_SUCH_VAR' is not set",
        ),
        (("999", "MOLAL_TEST_LS_TOKEN"), "no project with id 999"),
    ]
    for (project, env), expected in cases:
        r = _push(root, server, project, env)
        assert r.exit_code == 2 and expected in r.output and "Traceback" not in r.output, r.output
    monkeypatch.setenv("MOLAL_TEST_LS_TOKEN", "not-the-token")
    r = _push(root, server, "x")
    assert r.exit_code == 2 and "refused the token in $MOLAL_TEST_LS_TOKEN" in r.output, r.output
    assert server.project_id("x") is None and server.project_id("other labels") is not None
