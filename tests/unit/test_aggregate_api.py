from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from molal_ray.aggregation import aggregate, load_gold, load_labels
from molal_ray.cli import main
from molal_ray.exceptions import AggregationError, SchemaError
from molal_ray.testing.synthetic import synthetic_table

LABELS = ["l0", "l1", "l2", "l3", "l4", "l5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("agg")
    table, truth = synthetic_table(1500, seed=3)
    pq.write_table(table, root / "ann.parquet")
    gold = pd.DataFrame({"sample_id": [f"s{i:08d}" for i in range(40)], "label": [LABELS[k] for k in truth[:40]]})
    gold.to_csv(root / "gold.csv", index=False)
    return root, table, truth, gold


def test_output_columns_negatives_and_gold_rows(data):
    root, table, truth, gold = data
    res = aggregate(table, load_gold(root / "gold.csv", LABELS), LABELS, validate=False)
    out = res.table.to_pandas()
    assert list(out.columns) == ["sample_id", "label", "probs", "confidence", "negatives", "is_gold", "n_annotators"]
    assert len(out) == 1500 and set(out["label"]) <= set(LABELS)
    g = out[out.is_gold].set_index("sample_id")
    assert g.loc[gold.sample_id, "label"].tolist() == gold.label.tolist()
    row = out.iloc[100]
    assert row.confidence == pytest.approx(max(row.probs))
    assert set(row.negatives) == {LABELS[k] for k, p in enumerate(row.probs) if p < 0.05}
    assert row.label not in row.negatives


def test_report_has_cv_intervals_baselines_and_annotator_quality(data):
    root, table, truth, gold = data
    res = aggregate(table, load_gold(root / "gold.csv", LABELS), LABELS, folds=5)
    v = res.report["validation"]
    # No embeddings: the default (pooled-text) is pooled exactly, so pooled is not listed twice.
    assert set(v) == {"pooled-text", "dawid-skene", "majority", "mean-probs", "molam-xgb"}
    assert "no embeddings" in res.report["text_view"]["note"]
    assert v["pooled-text"]["folds"] == 5 and v["pooled-text"]["n_gold"] == 40
    lo, hi = v["pooled-text"]["ci95"]
    assert 0 <= lo <= v["pooled-text"]["accuracy"] <= hi <= 1
    q = res.report["annotator_quality"]
    assert set(q) == {f"llm{a}" for a in range(5)} and q["llm0"]["n"] == 40
    assert np.asarray(q["llm0"]["confusion"]).sum() == 40


def test_gold_label_not_in_label_set_names_the_line(tmp_path):
    (tmp_path / "g.csv").write_text("sample_id,label\ns1,l0\ns2,banana\n")
    with pytest.raises(AggregationError, match=r"first at line 3: 'banana'\); expected one of"):
        load_gold(tmp_path / "g.csv", LABELS)


def test_gold_problems(tmp_path, data):
    root, table, truth, gold = data
    (tmp_path / "cols.csv").write_text("id,label\ns1,l0\n")
    with pytest.raises(SchemaError, match="missing columns"):
        load_gold(tmp_path / "cols.csv", LABELS)
    (tmp_path / "header.csv").write_text("sample_id,label\n")
    with pytest.raises(AggregationError, match="holds no rows"):
        load_gold(tmp_path / "header.csv", LABELS)
    (tmp_path / "conf.csv").write_text("sample_id,label\ns1,l0\ns1,l1\n")
    with pytest.raises(AggregationError, match="conflicting"):
        load_gold(tmp_path / "conf.csv", LABELS)
    nowhere = pd.DataFrame({"sample_id": ["zz1", "zz2"], "label": ["l0", "l1"], "y": [0, 1]})
    with pytest.raises(AggregationError, match="none of the 2 gold ids is in the annotation table"):
        aggregate(table, nowhere, LABELS)
    some = pd.concat([load_gold(root / "gold.csv", LABELS), nowhere], ignore_index=True)
    res = aggregate(table, some, LABELS, validate=False)
    assert res.report["gold_ignored_not_in_table"] == 2 and res.report["gold_used"] == 40


def test_single_class_gold_and_fewer_gold_than_folds(data):
    root, table, truth, gold = data
    one = pd.DataFrame({"sample_id": ["s00000000", "s00000001", "s00000002"], "label": ["l0"] * 3, "y": [0] * 3})
    res = aggregate(table, one, LABELS, folds=5)
    assert any("single class" in w for w in res.report["warnings"])
    assert res.report["validation"]["pooled-text"]["folds"] == 3
    assert "leave-one-out" in res.report["validation"]["pooled-text"]["note"]
    assert set(res.table.column("label").to_pylist()) <= set(LABELS)


def test_probs_of_the_wrong_length_is_a_clear_error(data):
    root, table, truth, gold = data
    with pytest.raises(SchemaError, match="expected 3 \\(the label set\\)"):
        aggregate(table, load_gold(root / "gold.csv", LABELS)[:0].assign(y=[]), LABELS[:3])


def test_load_labels(tmp_path):
    assert load_labels("a, b,c") == ["a", "b", "c"]
    (tmp_path / "l.txt").write_text("x\ny\n\n")
    assert load_labels(str(tmp_path / "l.txt")) == ["x", "y"]
    with pytest.raises(AggregationError):
        load_labels("solo")


def test_cli_aggregate(data, tmp_path):
    root, *_ = data
    r = CliRunner().invoke(
        main,
        [
            "aggregate",
            "--annotations",
            str(root / "ann.parquet"),
            "--gold",
            str(root / "gold.csv"),
            "--labels",
            ",".join(LABELS),
            "--out",
            str(tmp_path / "o.parquet"),
            "--method",
            "dawid-skene",
            "--folds",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "dawid-skene" in r.output and "<- chosen" in r.output
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 1500
    bad = CliRunner().invoke(
        main,
        [
            "aggregate",
            "--annotations",
            str(root / "ann.parquet"),
            "--gold",
            str(root / "gold.csv"),
            "--labels",
            "a,b",
            "--out",
            str(tmp_path / "x.parquet"),
        ],
    )
    assert bad.exit_code == 2 and "error: gold" in bad.output and "Traceback" not in bad.output


def test_aggregate_pool_mistakes_are_one_line_before_ray_starts(data, tmp_path, monkeypatch):
    import molal_ray.runtime

    root, table, truth, gold = data
    started = []
    monkeypatch.setattr(molal_ray.runtime, "ensure_ray", lambda cfg: started.append(cfg))
    pq.write_table(table, tmp_path / "t.parquet")
    pd.DataFrame({"id": ["s00000000"], "text": ["a question"]}).to_parquet(tmp_path / "pool.parquet")
    base = [
        "aggregate",
        "--annotations",
        str(tmp_path / "t.parquet"),
        "--gold",
        str(root / "gold.csv"),
        "--labels",
        ",".join(LABELS),
        "--out",
        str(tmp_path / "o.parquet"),
    ]
    cases = [
        (["--pool", str(tmp_path / "missing.parquet")], "expected an existing file"),
        (["--pool", str(tmp_path / "pool.parquet"), "--text-column", "question"], "no column ['question']"),
        (["--pool", str(tmp_path / "pool.parquet"), "--encoder", str(tmp_path / "no-model")], "no such folder"),
    ]
    for extra, expected in cases:
        r = CliRunner().invoke(main, base + extra)
        assert r.exit_code == 2 and expected in r.output and "Traceback" not in r.output, r.output
    assert started == []  # every one was refused before Ray was asked for


def test_cli_aggregate_reads_the_labels_from_the_tables_manifest(data, tmp_path):
    """A label output folder names its labels in its manifest, in the order of probs and votes:
    --labels is then optional, and a --labels in another order (which would swap the classes
    silently) or of other labels is one error line."""
    from molal_ray.pipeline.output import open_output, write_part

    root, table, truth, gold = data
    out = open_output(tmp_path / "ann", "overwrite", LABELS, sorted(set(table.column("annotator").to_pylist())))
    write_part(out.parts, table)
    base = ["aggregate", "--annotations", str(tmp_path / "ann"), "--gold", str(root / "gold.csv"), "--no-validate"]
    r = CliRunner().invoke(main, [*base, "--method", "majority", "--out", str(tmp_path / "a.parquet")])
    assert r.exit_code == 0, r.output
    same = CliRunner().invoke(
        main, [*base, "--method", "majority", "--labels", ",".join(LABELS), "--out", str(tmp_path / "b.parquet")]
    )
    assert same.exit_code == 0, same.output
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
    swapped = [LABELS[1], LABELS[0], *LABELS[2:]]
    for given, expected in [(swapped, "the same labels in another order"), (["x", "y"], "was written for")]:
        bad = CliRunner().invoke(main, [*base, "--labels", ",".join(given), "--out", str(tmp_path / "c.parquet")])
        assert bad.exit_code == 2 and expected in bad.output and "Traceback" not in bad.output, bad.output
        assert bad.output.count("\n") == 1 and not (tmp_path / "c.parquet").exists()
    loose = CliRunner().invoke(
        main,
        ["aggregate", "--annotations", str(root / "ann.parquet"), "--gold", str(root / "gold.csv")]
        + ["--out", str(tmp_path / "d.parquet")],
    )
    assert loose.exit_code == 2 and "has no manifest naming its labels" in loose.output
