"""`molal-ray predict` without Ray: the predictor stage called directly (rows written once, flagged
rows kept, known rows keep their labels), the choice of the doubtful rows, the combination of the
mixture and the classifier, and every bad input as one line before Ray starts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from molal_ray import schema
from molal_ray.cli import main
from molal_ray.config.predict import EscalationConfig
from molal_ray.exceptions import ConfigError
from molal_ray.inference.escalate import choose, final_labels
from molal_ray.inference.job import read_known
from molal_ray.inference.stage import PredictStage
from molal_ray.pipeline.annotate_stage import stage_batch
from molal_ray.pipeline.output import DoneIndex, read_table
from molal_ray.products.model import describe_model
from molal_ray.schema import PREDICTIONS
from tests.conftest import TREC, TREC_LABELS, replay_label_config

TEXTS = ["Who wrote Hamlet?", "Where is Paris?", "How many legs has a spider?", "What is DNA?", "Why?"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from molal_ray.testing.tiny_models import build_head_export

    return str(build_head_export(tmp_path_factory.mktemp("m") / "model", TREC_LABELS, TEXTS))


def _known(path, rows):
    pq.write_table(
        pa.table(
            {
                "sample_id": [r[0] for r in rows],
                "label": [r[1] for r in rows],
                "source": [r[2] for r in rows],
                "confidence": pa.array([r[3] for r in rows], pa.float32()),
            }
        ),
        path,
    )
    return str(path)


def _block(ids, texts, errors=None):
    t = stage_batch(np.arange(len(ids)), ids, texts)
    if errors is not None:
        t = t.set_column(t.schema.get_field_index(schema.POOL_ERROR), schema.POOL_ERROR, pa.array(errors, pa.string()))
    return t


def test_the_stage_writes_each_row_once_keeps_flagged_rows_and_known_labels(tmp_path, model):
    parts = tmp_path / "parts"
    parts.mkdir()
    known = read_known(
        _known(tmp_path / "k.parquet", [("s1", "human", "gold", None), ("s2", "entity", "molal", 0.6)]), TREC_LABELS
    )
    ids = [f"s{i}" for i in range(5)]
    block = _block(ids, TEXTS, [None, None, None, "empty_text", None])
    stage = PredictStage(model, TREC_LABELS, parts, DoneIndex(parts, kind=PREDICTIONS), known, batch_size=2)
    stats = stage(block).to_pylist()
    assert {r["source"]: r["rows"] for r in stats} == {"classifier": 2, "gold": 1, "molal": 1, "flagged": 1}
    t = {r["sample_id"]: r for r in read_table(tmp_path, PREDICTIONS).to_pylist()}
    assert set(t) == set(ids)
    assert t["s1"]["label"] == "human" and t["s1"]["source"] == "gold" and t["s1"]["confidence"] == 1.0
    assert t["s2"]["label"] == "entity" and t["s2"]["confidence"] == pytest.approx(0.6)
    assert t["s3"]["label"] is None and t["s3"]["error"] == "empty_text" and t["s3"]["probs"] is None
    # The classifier's rows are what the classifier itself says.
    from molal_ray.products import load_classifier

    probs = load_classifier(model).predict_proba([TEXTS[0], TEXTS[4]])
    for sid, p in zip(["s0", "s4"], probs):
        np.testing.assert_allclose(t[sid]["probs"], p, atol=1e-5)
        assert t[sid]["label"] == TREC_LABELS[int(p.argmax())] and t[sid]["confidence"] == pytest.approx(p.max())
    # Called again on the same block (a retried block, a resumed run): nothing new is written.
    again = PredictStage(model, TREC_LABELS, parts, DoneIndex(parts, kind=PREDICTIONS), known)
    assert again(block).num_rows == 0 and read_table(tmp_path, PREDICTIONS).num_rows == 5


def test_the_doubtful_rows_are_the_least_confident_ties_broken_the_same_way_every_time():
    conf = np.array([0.9, 0.3, 0.5, 0.3, 0.8, 0.3], np.float32)
    ids = np.array([f"id{i}" for i in range(6)], dtype=object)
    two = choose(conf, ids, EscalationConfig(label_config="x", budget=2 / 6), 6)
    assert len(two) == 2 and set(two) <= {1, 3, 5}  # two of the three tied at 0.3
    np.testing.assert_array_equal(
        two, choose(conf[::-1].copy()[::-1], ids.copy(), EscalationConfig(label_config="x", budget=2 / 6), 6)
    )
    assert set(choose(conf, ids, EscalationConfig(label_config="x", budget=0.5), 6)) == {1, 3, 5}
    assert set(choose(conf, ids, EscalationConfig(label_config="x", below=0.6), 6)) == {1, 2, 3, 5}
    assert len(choose(conf, ids, EscalationConfig(label_config="x", below=0.0), 6)) == 0
    # The budget is a share of the pool's usable rows (known rows are never escalated).
    assert len(choose(conf, ids, EscalationConfig(label_config="x", budget=0.1), 40)) == 4


def test_an_escalated_rows_label_is_the_product_of_the_mixture_and_the_classifier(tmp_path):
    from molal_ray.pipeline.output import OutputDir, open_output, write_part

    out: OutputDir = open_output(tmp_path, "resume", ["a", "b", "c"], [], PREDICTIONS)
    clf = np.array([[0.1, 0.6, 0.3], [0.5, 0.4, 0.1]], np.float32)
    from molal_ray.inference.stage import prediction_rows

    write_part(out.parts, prediction_rows(["x", "y"], clf, ["a", "b", "c"]), 0, PREDICTIONS)
    mix = np.array([[0.2, 0.7, 0.1], [0.1, 0.2, 0.7]], np.float32)  # rows y, x
    mixture = pa.table({"sample_id": ["y", "x"], "probs": pa.array(mix.tolist(), pa.list_(pa.float32()))})
    got = final_labels(out, mixture, ["a", "b", "c"], "product").to_pylist()
    want = mix * clf[[1, 0]]  # y: 0.10 0.28 0.01 -> b; x: 0.01 0.12 0.21 -> c
    want /= want.sum(1, keepdims=True)
    assert [r["label"] for r in got] == ["b", "c"]
    np.testing.assert_allclose([r["confidence"] for r in got], want.max(1), rtol=1e-5)
    alone = final_labels(out, mixture, ["a", "b", "c"], "mixture").to_pylist()
    assert [r["label"] for r in alone] == ["b", "c"] and alone[0]["confidence"] == pytest.approx(0.7)


def _answers(annotator, ids, label=0):
    from molal_ray.pipeline.annotate_stage import annotation_rows

    n, c = len(ids), len(TREC_LABELS)
    probs = np.full((n, c), 0.1 / (c - 1), np.float32)
    probs[:, label] = 0.9
    payload = {"error": [None] * n, "warning": [None] * n, "probs": probs, "votes": probs * 10}
    return annotation_rows(annotator, ids, {**payload, "n_invalid": [0] * n, "n_samples": [10] * n}, [None] * n)


def test_the_escalation_reuses_the_loops_answers_of_annotators_with_the_same_settings(tmp_path):
    from molal_ray.config import LabelJobConfig
    from molal_ray.inference.escalate import loop_answers, reuse_loop_answers
    from molal_ray.pipeline.annotate_stage import error_rows
    from molal_ray.pipeline.output import compact, open_output, pin_buckets, read_annotation_table, write_part
    from molal_ray.serve.fingerprint import fingerprints

    lcfg = LabelJobConfig.from_dict(replay_label_config(tmp_path / "pool.parquet", tmp_path / "unused"))
    names = [a.name for a in lcfg.annotators]
    # The loop's table (OUT/annotations beside OUT/labels.parquet): gemma, llama and mistral with
    # the label config's settings; qwen with another temperature; yi never asked.
    qwen = lcfg.annotators[3]
    other = [
        *lcfg.annotators[:3],
        qwen.model_copy(update={"sampling": qwen.sampling.model_copy(update={"temperature": 0.2})}),
    ]
    loop = open_output(
        tmp_path / "loop" / "annotations", "resume", TREC_LABELS, names[:4], fingerprints=fingerprints(other, lcfg.task)
    )
    for name in names[:4]:
        write_part(loop.parts, _answers(name, ["g1", "g2", "g3", "q9"]))
    write_part(loop.parts, error_rows("gemma", ["g4"], ["timeout: 3 tries"], [None]))  # a call that failed: asked again
    assert loop_answers(str(tmp_path / "loop" / "labels.parquet")).root == loop.root
    assert loop_answers(str(tmp_path / "labels.parquet")) is None and loop_answers(None) is None

    esc = pin_buckets(
        open_output(
            tmp_path / "pred" / "escalation",
            "resume",
            TREC_LABELS,
            names,
            fingerprints=fingerprints(lcfg.annotators, lcfg.task),
        ),
        4,
    )
    gold = ["g1", "g2", "g3", "g4", "not-in-the-loop"]
    assert reuse_loop_answers(lcfg, esc, loop, gold, 4) == 9  # 3 rows x 3 annotators; not q9 (not asked for)
    t = read_annotation_table(esc.root)
    assert sorted(zip(t.column("sample_id").to_pylist(), t.column("annotator").to_pylist())) == sorted(
        (i, n) for i in ["g1", "g2", "g3"] for n in names[:3]
    )
    src = read_annotation_table(loop.root).to_pandas().set_index(["sample_id", "annotator"])
    got = t.to_pandas().set_index(["sample_id", "annotator"])
    assert got["error"].isna().all() and all(list(got.loc[k, "probs"]) == list(src.loc[k, "probs"]) for k in got.index)
    # Each row lands in its pool bucket, as the label job's own parts do.
    from molal_ray.ids import hash_ids
    from molal_ray.pipeline.prepare import bucket_of

    done = DoneIndex(esc.parts)
    for k in range(4):
        mine = [i for i in ["g1", "g2", "g3"] if bucket_of(hash_ids([i]), 4)[0] == k]
        assert done.mask("gemma", hash_ids(mine), k).all() if mine else True
    # Again (a larger budget later), and after a compaction: nothing copied twice.
    assert reuse_loop_answers(lcfg, esc, loop, gold, 4) == 9
    compact(esc, 4, 0.25)
    assert reuse_loop_answers(lcfg, esc, loop, gold, 4) == 9
    assert read_annotation_table(esc.root).num_rows == 9


def test_what_is_not_a_model_is_one_clear_error(tmp_path, model):
    assert describe_model(model)["labels"] == TREC_LABELS and describe_model(model)["kind"] == "head"
    with pytest.raises(ConfigError, match="is not a folder"):
        describe_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds neither classifier.json"):
        describe_model(tmp_path / "empty")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="names no classifier labels"):
        describe_model(tmp_path / "hf")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "classifier.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        describe_model(tmp_path / "odd")
    k = _known(tmp_path / "k.parquet", [("a", "sports", "gold", 1.0)])
    with pytest.raises(ConfigError, match=r"labels \['sports'\] the model does not have"):
        read_known(k, TREC_LABELS)
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match=r"lacks columns \['sample_id', 'label', 'source'\]"):
        read_known(str(tmp_path / "bad.parquet"), TREC_LABELS)


def _invoke(args):
    return CliRunner().invoke(main, ["predict", *args])


def _one_error(r, pattern):
    import re

    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert re.search(pattern, r.output), r.output
    return lines


@pytest.mark.usefixtures("ray_must_not_start")
def test_bad_predict_input_is_one_line_before_ray_starts(tmp_path, model):
    pool = str(TREC / "pool.parquet")
    out = str(tmp_path / "pred")
    base = ["--model", model, "--pool", pool, "--out", out]
    label_cfg = tmp_path / "label.yaml"
    label_cfg.write_text(yaml.safe_dump(replay_label_config(pool, tmp_path / "x")))
    other = replay_label_config(pool, tmp_path / "x")
    other["task"]["labels"] = list(reversed(TREC_LABELS))
    other_cfg = tmp_path / "other.yaml"
    other_cfg.write_text(yaml.safe_dump(other))
    folder = tmp_path / "pool"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), folder / "a.parquet")
    bad_pool = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), bad_pool)
    cases = [
        (["--model", str(tmp_path), "--pool", pool, "--out", out], "holds neither classifier.json"),
        (["--model", model, "--pool", str(bad_pool), "--out", out], "text"),
        ([*base, "--escalate", str(label_cfg), "--budget", "0"], "0<x<=1"),
        ([*base, "--escalate", str(label_cfg), "--budget", "1.5"], "0<x<=1"),
        ([*base, "--escalate", str(label_cfg), "--below", "-0.1"], "0<=x<=1"),
        ([*base, "--budget", "0.2"], "give --escalate LABEL_CONFIG too"),
        ([*base, "--escalate", str(label_cfg)], "exactly one of --budget"),
        ([*base, "--escalate", str(label_cfg), "--budget", "0.2", "--below", "0.5"], "exactly one of --budget"),
        ([*base, "--escalate", str(other_cfg), "--budget", "0.2", "--known", "none"], "another order"),
        ([*base, "--escalate", str(label_cfg), "--budget", "0.2", "--known", "none"], "give --known"),
        ([*base, "--escalate", str(label_cfg), "--budget", "0.2", "--aggregator", "nope"], "--aggregator: got 'nope'"),
        ([*base, "--escalate", str(tmp_path / "none.yaml"), "--budget", "0.2"], "expected an existing YAML file"),
        ([*base, "--known", str(tmp_path / "none.parquet")], "--known: .* is not a file"),
        (["--model", model, "--pool", str(folder), "--out", str(folder / "pred")], "inside the pool"),
    ]
    for args, pattern in cases:
        r = _invoke(args)
        lines = _one_error(r, pattern)
        assert "Traceback" not in r.output, r.output
        if not pattern.startswith("0<"):  # click's own range errors print a usage line too
            assert len(lines) == 1 and lines[0].startswith("error: "), r.output


def test_the_known_labels_default_to_the_loops_beside_its_model(tmp_path, model):
    from molal_ray.config.predict import PredictJobConfig
    from molal_ray.inference.job import default_known

    loop = tmp_path / "loop"
    (loop / "model").mkdir(parents=True)
    assert default_known(str(loop / "model")) is None
    _known(loop / "labels.parquet", [("a", "human", "gold", 1.0)])
    assert default_known(str(loop / "model")) == str(loop / "labels.parquet")
    cfg = {"model": model, "pool": {"path": str(TREC / "pool.parquet")}, "output": {"path": str(tmp_path / "p")}}
    assert PredictJobConfig.model_validate(cfg).known == "auto"
    assert PredictJobConfig.model_validate({**cfg, "known": "none"}).known is None
