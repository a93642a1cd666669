"""Review files: which samples go to people, CSV and Label Studio out and back, bad files refused
whole; the review commands end to end on a small aggregation."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from molal_ray.cli import main
from molal_ray.exceptions import ReviewError
from molal_ray.review import (
    ReviewItem,
    agreement,
    check_labelstudio_config,
    csv_text,
    labelstudio_answers,
    labelstudio_config,
    labelstudio_tasks,
    least_certain,
    matrix_answers,
    read_review,
    uncertainty,
)

LABELS = ["pos", "neg", "neutral"]


def test_least_certain_by_each_rule():
    p = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0], [0.34, 0.33, 0.33]])
    assert least_certain(p, 2, "margin").tolist() == [2, 3]  # margins 0.85, 0.05, 0.0, 0.01
    assert least_certain(p, 1, "entropy").tolist() == [3]
    assert least_certain(p, 1, "confidence").tolist() == [3]
    votes = np.array([[[1, 0, 0], [1, 0, 0]], [[0, 1, 0], [0, 0, 1]], [[1, 0, 0], [np.nan] * 3], [[1, 0, 0]] * 2])
    assert uncertainty(p, "disagreement", votes).tolist() == [0.0, 1.0, 0.0, 0.0]
    assert least_certain(p, 1, "disagreement", votes).tolist() == [1]
    with pytest.raises(ReviewError):
        uncertainty(p, "vibes")
    # ties broken by id, not by position
    flat = np.full((3, 3), 1 / 3)
    assert least_certain(flat, 1, "margin", ids=["c", "a", "b"]).tolist() == [1]


ITEMS = [ReviewItem("s1", "great, thanks", "pos", 0.55), ReviewItem("s2", 'he said "no", then left', "neg", 0.41)]


def test_csv_round_trip(tmp_path):
    path = tmp_path / "review.csv"
    path.write_text(csv_text(ITEMS))
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r["text"] for r in rows] == ["great, thanks", 'he said "no", then left'] and rows[0]["label"] == ""
    assert read_review(str(path), LABELS, ["s1", "s2"]) == {}  # nobody reviewed yet
    with pytest.raises(ReviewError, match="2 of 2 samples are not reviewed"):
        read_review(str(path), LABELS, ["s1", "s2"], require_all=True)
    rows[0]["label"], rows[1]["label"] = "pos", "neutral"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())
    assert read_review(str(path), LABELS, ["s1", "s2"], require_all=True) == {"s1": "pos", "s2": "neutral"}


def _ls_export(choices):
    """What Label Studio exports after the review: each task with one annotation."""
    tasks = labelstudio_tasks(ITEMS)
    for t, c in zip(tasks, choices):
        t["id"] = 1
        t["annotations"] = [
            {
                "id": 7,
                "was_cancelled": c is None,
                "result": []
                if c is None
                else [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [c]}}],
            }
        ]
    return tasks


def test_labelstudio_tasks_config_and_export(tmp_path):
    tasks = labelstudio_tasks(ITEMS, batch="round-2")
    assert tasks[0]["data"] == {"text": "great, thanks", "sample_id": "s1", "llm_answers": "(none)", "batch": "round-2"}
    shown = labelstudio_tasks(
        [ReviewItem("s3", "ok", "pos", 0.6, {"llama": "pos (70% of its answers)", "qwen": "neg (p=0.55)"})]
    )
    assert shown[0]["data"]["llm_answers"] == "llama: pos (70% of its answers); qwen: neg (p=0.55)"
    assert tasks[0]["predictions"][0]["result"][0]["value"] == {"choices": ["pos"]}
    assert tasks[0]["predictions"][0]["score"] == 0.55
    config = labelstudio_config(LABELS)
    assert '<Choices name="label" toName="text"' in config and '<Choice value="neutral"/>' in config
    assert 'value="$llm_answers"' in config
    check_labelstudio_config(config, LABELS, "p")  # its own config passes
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_ls_export(["neg", None])))  # the second was skipped (cancelled)
    assert read_review(str(path), LABELS, ["s1", "s2"]) == {"s1": "neg"}


@pytest.mark.parametrize(
    "bad, message",
    [
        (["pos", "positive"], "not in the label set"),
        (["pos", "neg"], "not among the samples"),
    ],
)
def test_a_bad_review_file_is_refused_whole(tmp_path, bad, message):
    path = tmp_path / "export.json"
    tasks = _ls_export(bad)
    if message == "not among the samples":
        tasks[1]["data"]["sample_id"] = "s99"
    path.write_text(json.dumps(tasks))
    with pytest.raises(ReviewError, match=message):
        read_review(str(path), LABELS, ["s1", "s2"])
    (tmp_path / "x.csv").write_text("id,answer\ns1,pos\n")
    with pytest.raises(ReviewError, match="expected at least sample_id and label"):
        read_review(str(tmp_path / "x.csv"), LABELS)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ReviewError, match="not valid JSON"):
        read_review(str(tmp_path / "x.json"), LABELS)


def test_review_commands_export_then_import_into_gold(tmp_path):
    ids = [f"s{i}" for i in range(6)]
    probs = [
        [0.9, 0.05, 0.05],
        [0.4, 0.35, 0.25],
        [0.5, 0.45, 0.05],
        [0.8, 0.1, 0.1],
        [0.34, 0.33, 0.33],
        [1.0, 0.0, 0.0],
    ]
    pq.write_table(
        pa.table(
            {
                "sample_id": ids,
                "label": [LABELS[int(np.argmax(p))] for p in probs],
                "probs": pa.array(probs, pa.list_(pa.float32())),
                "confidence": pa.array([max(p) for p in probs], pa.float32()),
                "negatives": pa.array([[]] * 6, pa.list_(pa.string())),
                "is_gold": [False] * 5 + [True],
            }
        ),
        tmp_path / "labels.parquet",
    )
    pq.write_table(pa.table({"id": ids, "text": [f"text {i}" for i in range(6)]}), tmp_path / "pool.parquet")
    run = CliRunner().invoke
    out = run(
        main,
        [
            "review",
            "export",
            "--aggregated",
            str(tmp_path / "labels.parquet"),
            "--labels",
            ",".join(LABELS),
            "--texts",
            str(tmp_path / "pool.parquet"),
            "--n",
            "3",
            "--out",
            str(tmp_path / "r.csv"),
            "--labelstudio",
            str(tmp_path / "r.json"),
        ],
    )
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["sample_id"] for r in rows] == ["s4", "s1", "s2"]  # least sure first; the gold row s5 never
    assert rows[0]["text"] == "text 4" and (tmp_path / "r.xml").read_text().count("<Choice ") == 3
    assert len(json.loads((tmp_path / "r.json").read_text())) == 3
    below = run(
        main,
        [
            "review",
            "export",
            "--aggregated",
            str(tmp_path / "labels.parquet"),
            "--labels",
            "pos,neg,neutral",
            "--texts",
            str(tmp_path / "pool.parquet"),
            "--below",
            "0.45",
            "--out",
            str(tmp_path / "b.csv"),
        ],
    )
    assert below.exit_code == 0 and [r["sample_id"] for r in csv.DictReader((tmp_path / "b.csv").open())] == [
        "s4",
        "s1",
    ]
    # the reviewers' Label Studio export comes back as gold labels
    export = json.loads((tmp_path / "r.json").read_text())
    for t, c in zip(export, ["neutral", "neg", "pos"]):
        t["annotations"] = [{"result": [{"type": "choices", "value": {"choices": [c]}}], "was_cancelled": False}]
    (tmp_path / "done.json").write_text(json.dumps(export))
    imp = run(
        main,
        [
            "review",
            "import",
            str(tmp_path / "done.json"),
            "--labels",
            "pos,neg,neutral",
            "--known",
            str(tmp_path / "r.csv"),
            "--out",
            str(tmp_path / "reviewed.csv"),
        ],
    )
    assert imp.exit_code == 0, imp.output
    assert (tmp_path / "reviewed.csv").read_text().splitlines() == ["sample_id,label", "s4,neutral", "s1,neg", "s2,pos"]
    # a bad export changes nothing
    export[0]["annotations"][0]["result"][0]["value"]["choices"] = ["happy"]
    (tmp_path / "bad.json").write_text(json.dumps(export))
    (tmp_path / "reviewed.csv").unlink()
    bad = run(
        main,
        [
            "review",
            "import",
            str(tmp_path / "bad.json"),
            "--labels",
            "pos,neg,neutral",
            "--known",
            str(tmp_path / "r.csv"),
            "--out",
            str(tmp_path / "reviewed.csv"),
        ],
    )
    assert bad.exit_code == 2 and "'happy'" in bad.output and not (tmp_path / "reviewed.csv").exists()


def test_import_into_a_paused_loop_needs_every_sample(tmp_path):
    from molal_ray.loop.state import LoopState

    LoopState(labels=LABELS, round=1).save(tmp_path / "run" / "state")
    (tmp_path / "run" / "review").mkdir()
    (tmp_path / "run" / "review" / "round-1.csv").write_text(csv_text(ITEMS))
    (tmp_path / "half.json").write_text(json.dumps(_ls_export(["neg", None])))
    (tmp_path / "all.json").write_text(json.dumps(_ls_export(["neg", "pos"])))
    args = ["review", "import", "--loop", str(tmp_path / "run"), "--round", "1"]
    half = CliRunner().invoke(main, [*args[:2], str(tmp_path / "half.json"), *args[2:]])
    target = tmp_path / "run" / "review" / "round-1.labels.csv"
    assert half.exit_code == 2 and "1 of 2 samples are not reviewed" in half.output and not target.exists()
    done = CliRunner().invoke(main, [*args[:2], str(tmp_path / "all.json"), *args[2:]])
    assert done.exit_code == 0, done.output
    assert target.read_text().splitlines() == ["sample_id,label", "s1,neg", "s2,pos"]


def test_aggregate_takes_several_gold_files_and_refuses_a_clash():
    import pandas as pd

    from molal_ray.aggregation.api import combine_gold
    from molal_ray.exceptions import AggregationError

    a = pd.DataFrame({"sample_id": ["s1", "s2"], "label": ["pos", "neg"], "y": [0, 1]})
    b = pd.DataFrame({"sample_id": ["s2", "s3"], "label": ["NEG", "neutral"], "y": [1, 2]})
    assert combine_gold([a, b])["sample_id"].tolist() == ["s1", "s2", "s3"]
    with pytest.raises(AggregationError, match="different labels"):
        combine_gold([a, b.assign(y=[0, 2])])


def test_the_loops_stop_and_pool_errors_survive_pickling():
    """They are raised in the coordinator actor and re-raised in the driver."""
    import pickle

    from molal_ray.exceptions import PoolExhaustedError, ReviewPending

    e = pickle.loads(pickle.dumps(ReviewPending(3, 10, "s3://b/run/review/round-3.csv")))
    assert (e.round, e.n, e.path) == (3, 10, "s3://b/run/review/round-3.csv") and "round 3: 10 samples" in str(e)
    p = pickle.loads(pickle.dumps(PoolExhaustedError(4, 50)))
    assert (p.available, p.requested) == (4, 50)


def test_review_csv_text_cells_never_start_a_formula():
    from molal_ray.review import ReviewItem, csv_text

    text = csv_text(
        [
            ReviewItem("s1", '=HYPERLINK("http://x")', "human", 0.5),
            ReviewItem("s2", "+1 is a number", "numeric", 0.5),
            ReviewItem("s3", "plain", "human", 0.5),
        ]
    )
    rows = text.splitlines()[1:]
    assert rows[0].split(",", 2)[1].startswith("\"'=HYPERLINK") and ",'+1 is a number," in rows[1]
    assert ",plain," in rows[2]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.replace('<Choice value="neutral"/>', ""), r"missing: \['neutral'\]"),
        (
            lambda c: c.replace('<Choice value="neutral"/>', '<Choice value="neutral"/><Choice value="mixed"/>'),
            r"not in the task: \['mixed'\]",
        ),
        (lambda c: c.replace('name="label"', 'name="sentiment"'), 'no <Choices name="label"'),
        (lambda c: c.replace('choice="single"', 'choice="multiple"'), "allows several choices"),
        (lambda c: c.replace('value="$text"', 'value="$body"'), 'no <Text name="text"'),
        (lambda c: c[:-10], "not valid XML"),
    ],
)
def test_a_labeling_config_that_cannot_hold_the_labels_is_refused(edit, message):
    config = labelstudio_config(LABELS)
    with pytest.raises(ReviewError, match=message):
        check_labelstudio_config(edit(config), LABELS, "project 'x'")
    # a team's own layout around the same tags is fine
    check_labelstudio_config(config.replace("<View>", '<View><Header value="Sentiment"/>'), LABELS, "p")


def test_the_latest_annotation_that_was_not_cancelled_is_the_label():
    def ann(label, at, cancelled=False, id_=1):  # type: ignore[no-untyped-def]
        return {
            "id": id_,
            "was_cancelled": cancelled,
            "updated_at": at,
            "result": []
            if cancelled
            else [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}],
        }

    tasks = [
        {
            "data": {"sample_id": "a"},
            "annotations": [ann("neg", "2026-12-03T10:00:02Z", id_=2), ann("pos", "2026-12-03T10:00:01Z", id_=1)],
        },
        {
            "data": {"sample_id": "b"},
            "annotations": [ann("pos", "2026-12-03T10:00:00Z"), ann("", "2026-12-03T10:00:05Z", cancelled=True)],
        },
        {"data": {"sample_id": "c"}, "annotations": [ann("", "2026-12-03T10:00:05Z", cancelled=True)]},
        {"data": {"sample_id": "d"}, "annotations": []},
    ]
    assert labelstudio_answers(tasks, "x") == [
        ("a", "neg", False),
        ("b", "pos", False),
        ("c", "", True),
        ("d", "", False),
    ]


def test_agreement_of_people_with_the_mixture_and_each_annotator():
    from molal_ray.aggregation.features import AnnotationMatrix

    nan = [np.nan] * 3
    votes = np.array([[[1, 0, 0], [0, 1, 0]], [[0, 0.7, 0.3], nan], [[0.2, 0.8, 0], [0, 0, 1]]], np.float32)
    probs = np.where(np.isnan(votes), np.nan, 0.5).astype(np.float32)
    m = AnnotationMatrix(np.array(["x", "y", "z"], dtype=object), ["a1", "a2"], probs, votes, ~np.isnan(votes).any(2))
    shown, top = matrix_answers(m, ["z", "y"], LABELS)
    assert shown == [
        {"a1": "neg (80% of its answers)", "a2": "neutral (100% of its answers)"},
        {"a1": "neg (70% of its answers)"},
    ]
    assert top.tolist() == [[1, 2], [1, -1]]
    got = agreement(np.array([1, 0]), np.array([1, 1]), top, ["a1", "a2"])
    assert got == {"n": 2, "mixture": 0.5, "annotators": {"a1": 0.5, "a2": 0.0}}


def test_waiting_for_people_polls_until_all_are_in_or_the_wait_runs_out():
    from molal_ray.review.backend import ReviewProgress, wait_for_people

    class Backend:
        where = "http://ls/projects/1"

        def __init__(self, arrivals):  # type: ignore[no-untyped-def]
            self.arrivals, self.pulls = arrivals, 0

        def pull(self, name, ids):  # type: ignore[no-untyped-def]
            done = self.arrivals[min(self.pulls, len(self.arrivals) - 1)]
            self.pulls += 1
            return ReviewProgress({i: "pos" for i in done[0]}, set(done[1]))

    t = [0.0]
    lines: list[str] = []

    def sleep(s):  # type: ignore[no-untyped-def]
        t[0] += s

    b = Backend([([], []), (["a"], []), (["a"], ["b"])])
    got = wait_for_people(
        b, "round-1", ["a", "b"], poll_s=5, wait_s=60, status=lines.append, sleep=sleep, clock=lambda: t[0]
    )
    assert got.complete(["a", "b"]) and got.skipped == {"b"} and b.pulls == 3 and t[0] == 10
    assert lines[-1] == "waiting for people: 2/2 labelled in http://ls/projects/1"
    b, t[0] = Backend([(["a"], [])]), 0.0
    got = wait_for_people(b, "round-1", ["a", "b"], poll_s=5, wait_s=12, sleep=sleep, clock=lambda: t[0])
    assert not got.complete(["a", "b"]) and b.pulls == 3 and t[0] == 10  # looked at 0, 5 and 10 s
