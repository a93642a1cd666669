"""Files people really have: what a spreadsheet writes (a UTF-8 byte-order mark before the header)
is read as the same file without it, everywhere a user's file comes in."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from molal_ray.aggregation.api import load_gold, load_labels
from molal_ray.preflight import check_files
from molal_ray.review.files import read_review
from tests.conftest import TREC_LABELS
from tests.unit.test_pool_and_prepare import _prepared
from tests.unit.test_preflight import _cfg

BOM = b"\xef\xbb\xbf"


def test_a_pool_csv_with_a_byte_order_mark_passes_the_checks_and_keeps_its_ids(tmp_path):
    from molal_ray.pipeline.pool import _read_csv

    data = BOM + b"id,text\nq1,What is it?\nq2,Who was he?\n"
    (tmp_path / "pool.csv").write_bytes(data)
    check_files(_cfg(tmp_path, "pool.csv"))  # the header's first column is 'id', not '\ufeffid'
    rows = _prepared(_read_csv(pa.BufferReader(data), "pool.csv", "id", "text"))
    assert [r["sample_id"] for r in rows] == ["q1", "q2"] and all(r["pool_error"] is None for r in rows)


def test_gold_review_label_and_known_files_with_a_byte_order_mark(tmp_path):
    (tmp_path / "gold.csv").write_bytes(BOM + b"sample_id,label\nq1,human\nq2,location\n")
    assert load_gold(tmp_path / "gold.csv", TREC_LABELS)["y"].tolist() == [3, 4]
    (tmp_path / "labels.txt").write_bytes(BOM + "\n".join(TREC_LABELS).encode() + b"\n")
    assert load_labels(str(tmp_path / "labels.txt")) == TREC_LABELS
    (tmp_path / "review.csv").write_bytes(BOM + b"sample_id,text,label\nq1,Who?,human\nq2,Where?,\n")
    assert read_review(str(tmp_path / "review.csv"), TREC_LABELS, ["q1", "q2"]) == {"q1": "human"}
    answer = {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["human"]}}
    export = [{"id": 1, "data": {"sample_id": "q1"}, "annotations": [{"id": 7, "result": [answer]}]}]
    (tmp_path / "export.json").write_bytes(BOM + json.dumps(export).encode())
    assert read_review(str(tmp_path / "export.json"), TREC_LABELS, ["q1"]) == {"q1": "human"}


@pytest.mark.parametrize("header", [b"sample_id,label", b"\xef\xbb\xbf\xef\xbb\xbfsample_id,label"])
def test_only_one_leading_mark_is_dropped(tmp_path, header):
    # A second mark is content (a column named '\ufeffsample_id'): a clear error, not a guess.
    (tmp_path / "gold.csv").write_bytes(header + b"\nq1,human\n")
    if header.startswith(BOM * 2):
        with pytest.raises(Exception, match="missing columns"):
            load_gold(tmp_path / "gold.csv", TREC_LABELS)
    else:
        assert len(load_gold(tmp_path / "gold.csv", TREC_LABELS)) == 1


@pytest.mark.parametrize(
    "labels, read_as",
    [("[yes, no]", "bool"), ("[on, off, maybe]", "bool"), ("[1, 2, 3]", "int"), ("[a, ~]", "NoneType")],
)
def test_labels_yaml_reads_as_values_get_a_message_that_says_to_quote_them(tmp_path, labels, read_as):
    from molal_ray.config import LabelJobConfig
    from molal_ray.exceptions import ConfigError

    (tmp_path / "c.yaml").write_text(
        f"task: {{labels: {labels}}}\nannotators: [{{name: a, engine: {{type: replay, path: r.parquet}}}}]\n"
        "pool: {path: p.parquet}\noutput: {path: out}\n"
    )
    with pytest.raises(ConfigError) as err:
        LabelJobConfig.from_file(tmp_path / "c.yaml")
    assert (
        "task.labels" in str(err.value) and f"as {read_as}" in str(err.value) and "quote each label" in str(err.value)
    )
    (tmp_path / "c.yaml").write_text(
        (tmp_path / "c.yaml")
        .read_text()
        .replace(labels, "[" + ", ".join(f'"{x.strip()}"' for x in labels[1:-1].split(",")) + "]")
    )
    quoted = LabelJobConfig.from_file(tmp_path / "c.yaml").task.labels  # quoted, each one is a label
    assert quoted == [x.strip() for x in labels[1:-1].split(",")]


def test_a_text_column_of_lists_or_objects_is_an_error_naming_it_or_a_flagged_row(tmp_path):
    import pyarrow.parquet as pq

    from molal_ray.exceptions import ConfigError
    from molal_ray.pipeline.pool import _read_jsonl, _read_parquet

    pq.write_table(pa.table({"id": ["a", "b"], "text": [["x", "y"], ["z"]]}), tmp_path / "lists.parquet")
    pq.write_table(pa.table({"id": ["a"], "text": [{"q": "x"}]}), tmp_path / "structs.parquet")
    (tmp_path / "lists.jsonl").write_text('{"id": "a", "text": ["x", "y"]}\n')
    expected = {
        "lists.parquet": "column 'text' (pool.text_column) holds list<element: string>, not text",
        "structs.parquet": "column 'text' (pool.text_column) holds struct<q: string>, not text",
        "lists.jsonl": "the column 'text' (pool.text_column) holds a list, not text",
    }
    for name, message in expected.items():
        with pytest.raises(ConfigError) as err:
            check_files(_cfg(tmp_path, name))
        assert message in str(err.value), str(err.value)
    # Past the first records the check reads, such a row is flagged in its place (never its repr).
    data = b'{"id": "a", "text": "fine"}\n{"id": "b", "text": ["x"]}\n{"id": ["c"], "text": "t"}\n'
    rows = _prepared(_read_jsonl(pa.BufferReader(data), "p.jsonl", "id", "text"))
    assert [r["pool_error"] for r in rows][0] is None
    assert [r["pool_error"] for r in rows][1:] == [
        "not_text: column 'text' holds a list",
        "not_text: column 'id' holds a list",
    ]
    with open(tmp_path / "lists.parquet", "rb") as f:
        flagged = _prepared(_read_parquet(f, "lists.parquet", "id", "text"))
    assert [r["pool_error"] for r in flagged] == ["not_text: column 'text' holds list<element: string>"] * 2


def test_outputs_that_cannot_be_written_and_missing_inputs_are_one_line_before_any_work(tmp_path, ray_must_not_start):
    import os

    from click.testing import CliRunner

    from molal_ray.cli import main
    from tests.conftest import TREC

    (tmp_path / "afile").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    ann = pa.table({"sample_id": ["q"], "annotator": ["a"], "probs": [[0.5, 0.5]], "votes": [[1.0, 0.0]]})
    import pyarrow.parquet as pq

    pq.write_table(ann, tmp_path / "ann.parquet")
    agg = ["aggregate", "--annotations", str(tmp_path / "ann.parquet"), "--gold", str(TREC / "gold-50.csv")]
    agg += ["--labels", "x,y", "--no-validate"]
    cases = [
        (agg + ["--out", str(tmp_path / "afile" / "o.parquet")], "--out: ", "is a file, not a folder"),
        (
            agg + ["--out", str(tmp_path / "o.parquet"), "--report", str(tmp_path / "afile/r.json")],
            "--report: ",
            "is a file",
        ),
        (agg + ["--out", str(tmp_path / "o.parquet"), "--report", str(locked)], "--report: ", "is a folder; expected"),
        (
            ["review", "import", str(tmp_path / "r.csv"), "--labels", "x,y", "--known", str(tmp_path / "no.csv")]
            + ["--out", str(tmp_path / "g.csv")],
            "--known: ",
            "does not exist",
        ),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((agg + ["--out", str(locked / "sub" / "o.parquet")], "--out: ", "no permission to write"))
    for args, option, expected in cases:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and r.output.startswith(f"error: {option}") and expected in r.output, r.output
        assert r.output.count("\n") == 1 and not (tmp_path / "o.parquet").exists()
    cfg = _cfg(tmp_path, "pool.csv", output={"path": str(tmp_path / "afile")})
    (tmp_path / "pool.csv").write_text("id,text\na,hello\n")
    with pytest.raises(Exception, match=r"output.path: .*afile is a file; expected a folder"):
        check_files(cfg)
    (tmp_path / "label.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    r = CliRunner().invoke(main, ["label", str(tmp_path / "label.yaml")])
    assert r.exit_code == 2 and "output.path: " in r.output and "Traceback" not in r.output, r.output


def test_review_labels_match_the_label_set_whatever_their_case_where_that_is_unambiguous(tmp_path):
    from molal_ray.exceptions import ReviewError

    (tmp_path / "r.csv").write_text("sample_id,label\nq1,Human\nq2, LOCATION \nq3,\n")
    assert read_review(str(tmp_path / "r.csv"), TREC_LABELS, ["q1", "q2", "q3"]) == {"q1": "human", "q2": "location"}
    (tmp_path / "two.csv").write_text("sample_id,label\nq1,POS\n")
    with pytest.raises(ReviewError, match="not in the label set"):  # 'pos' and 'Pos' both exist: no guess
        read_review(str(tmp_path / "two.csv"), ["pos", "Pos", "neg"], ["q1"])
    (tmp_path / "clash.csv").write_text("sample_id,label\nq1,human\nq1,HUMAN\n")
    assert read_review(str(tmp_path / "clash.csv"), TREC_LABELS, ["q1"]) == {"q1": "human"}  # the same label twice


def test_messages_say_what_to_change(tmp_path):
    from click.testing import CliRunner

    from molal_ray.cli import main
    from molal_ray.config import TaskConfig
    from molal_ray.exceptions import ConfigError
    from tests.conftest import TREC

    with pytest.raises(Exception, match=r"got \{json\} \(a brace meant as text is written twice: \{\{ and \}\}\)"):
        TaskConfig(labels=["a", "b"], prompt_template="Answer with {json}: {text}")
    for name, what in [("p.tsv", "tab-separated values"), ("p.xlsx", "a spreadsheet workbook")]:
        (tmp_path / name).write_bytes(b"id\ttext\n")
        with pytest.raises(ConfigError, match=f"is {what}, which is not read; save it as CSV"):
            check_files(_cfg(tmp_path, name))
    for command, config, right in [("label", "loop.yaml", "molal-ray run"), ("run", "label.yaml", "molal-ray label")]:
        r = CliRunner().invoke(main, [command, str(TREC / config)])
        assert r.exit_code == 2 and f"use it with `{right}`" in r.output and r.output.count("\n") == 1, r.output


def test_a_cluster_address_where_nothing_answers_is_one_line_within_seconds(tmp_path):
    import time

    from click.testing import CliRunner

    from molal_ray.cli import main
    from molal_ray.testing.vllm_server import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    for args in (["status"], ["scale", "llama", "--replicas", "2"], ["deploy", "serve_configs/annotators-cpu.yaml"]):
        t0 = time.monotonic()
        r = CliRunner().invoke(main, ["annotators", *args, "--address", address])
        assert time.monotonic() - t0 < 15
        assert r.exit_code == 2 and r.output.startswith(f"error: --address: nothing answers at {address}"), r.output


def test_an_encoder_that_is_neither_a_folder_here_nor_a_cached_hub_model_says_both(tmp_path, monkeypatch):
    from molal_ray.exceptions import ConfigError
    from molal_ray.preflight import check_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"cannot load 'models/minilm': no folder of that name here .* not in the local"
    ):
        check_encoder("models/minilm", "--encoder")
    for path in (str(tmp_path / "gone"), "./gone/model"):
        with pytest.raises(ConfigError, match="no such folder"):
            check_encoder(path, "--encoder")


def test_a_pool_on_storage_that_never_answers_is_one_line_within_the_bound(tmp_path, monkeypatch):
    """An endpoint that takes the connection and never answers (no network, a dead proxy): the
    storage client retries for minutes (3m20s measured); the check gives up after its bound."""
    import socket
    import time

    import molal_ray.preflight as preflight
    from molal_ray.exceptions import ConfigError

    monkeypatch.setattr(preflight, "STORAGE_ANSWER_S", 2.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the backlog; nothing ever answers
    port = silent.getsockname()[1]
    try:
        cfg = _cfg(
            tmp_path, "x", pool={"path": f"s3://bucket/pool.parquet?endpoint_override=127.0.0.1:{port}&scheme=http"}
        )
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=r"pool.path: s3://bucket/pool.parquet\?.* did not answer in 2s"):
            check_files(cfg)
        assert time.monotonic() - t0 < 10
    finally:
        silent.close()


@pytest.mark.parametrize("field", ["gold", "few-shot", "recording"])
def test_every_file_on_storage_that_never_answers_is_one_line_within_the_bound(tmp_path, monkeypatch, field):
    """The gold file, the few-shot examples and a recording on an object store that takes the
    connection and never answers: each is one line after the check's bound, as the pool is,
    instead of the storage client's minutes of retries."""
    import socket
    import time

    import molal_ray.preflight as preflight
    from molal_ray.exceptions import ConfigError
    from tests.unit.test_preflight import _loop_cfg

    monkeypatch.setattr(preflight, "STORAGE_ANSWER_S", 2.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the backlog; nothing ever answers
    uri = f"s3://bucket/{{}}?endpoint_override=127.0.0.1:{silent.getsockname()[1]}&scheme=http"
    over: dict = {
        "gold": {"gold": uri.format("gold.csv")},
        "few-shot": {"task": {"few_shot": {"examples": uri.format("examples.csv"), "k": 2}}},
        "recording": {"annotators": [{"name": "gemma", "engine": {"type": "replay", "path": uri.format("r.parquet")}}]},
    }[field]
    try:
        cfg = _loop_cfg(tmp_path, loop={"initial_gold": 20}, **over)
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=r"did not answer in 2s") as err:
            check_files(cfg)
        assert time.monotonic() - t0 < 15 and err.value.args[0].count("did not answer") == 1, err.value
    finally:
        silent.close()
