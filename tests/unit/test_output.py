from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from molal_ray import schema
from molal_ray.exceptions import ConfigError
from molal_ray.ids import hash_ids
from molal_ray.pipeline.annotate_stage import error_rows
from molal_ray.pipeline.output import (
    DoneIndex,
    compact_bucket,
    is_done,
    open_output,
    part_name,
    read_annotation_table,
    table_files,
    table_fingerprints,
    write_part,
)
from molal_ray.storage import resolve


def _rows(ids, annotator="m"):
    return error_rows(annotator, ids, ["empty_text"] * len(ids), [None] * len(ids))


def test_part_names_depend_on_content_not_order():
    assert part_name(["a", "b"], ["m", "m"]) == part_name(["b", "a"], ["m", "m"])
    assert part_name(["a", "b"], ["m", "m"]) != part_name(["a", "c"], ["m", "m"])


def test_rewriting_the_same_batch_replaces_its_part(tmp_path):
    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    write_part(out.parts, _rows(["a", "b"]))
    write_part(out.parts, _rows(["b", "a"]))  # a retried batch
    t = read_annotation_table(out.root)
    assert sorted(t.column("sample_id").to_pylist()) == ["a", "b"]
    assert not out.parts.list(prefix=".tmp-")


def test_stale_temporary_parts_are_removed_on_reopen(tmp_path):
    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    (tmp_path / "o" / "parts" / ".tmp-dead-part.parquet").write_bytes(b"half a file")
    write_part(out.parts, _rows(["a"]))
    assert read_annotation_table(out.root).num_rows == 1  # the stale file is not read
    open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    assert not out.parts.list(prefix=".tmp-")


def test_done_set_per_annotator(tmp_path):
    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m", "n"])
    write_part(out.parts, pa.concat_tables([_rows(["a", "b"], "m"), _rows(["c"], "n")]), bucket=0)
    write_part(out.parts, _rows(["e"], "m"), bucket=1)
    done = DoneIndex(out.parts)
    h = hash_ids(["a", "b", "c", "d", "e"])
    assert done.mask("m", h, 0).tolist() == [True, True, False, False, False]
    assert done.mask("n", h, 0).tolist() == [False, False, True, False, False]
    assert done.mask("m", h, 1).tolist() == [False] * 4 + [True]  # each bucket loads its own parts
    assert done.mask("o", h, 0).tolist() == [False] * 5
    assert done.mask("m", h).tolist() == [True, True, False, False, True]  # the whole table
    assert DoneIndex(out.parts, empty=True).mask("m", h, 0).tolist() == [False] * 5
    assert is_done(None, h).tolist() == [False] * 5


def test_a_table_refuses_an_annotator_of_the_same_name_with_other_settings(tmp_path):
    from molal_ray.config import AnnotatorConfig, TaskConfig
    from molal_ray.serve.fingerprint import fingerprints

    task = TaskConfig(name="t", labels=["x", "y"])
    m = AnnotatorConfig(name="m", engine={"type": "replay", "path": "/r.parquet"})
    hotter = m.model_copy(update={"sampling": m.sampling.model_copy(update={"temperature": 0.9})})
    path = str(tmp_path / "o")
    out = open_output(path, "resume", ["x", "y"], ["m"], fingerprints=fingerprints([m], task))
    write_part(out.parts, _rows(["a"]))
    open_output(path, "resume", ["x", "y"], ["m"], fingerprints=fingerprints([m], task))  # the same: resumed
    with pytest.raises(
        ConfigError,
        match=r"annotator 'm' given with other settings \(sampling.temperature: 0.9 in the job, 0.7 in the table",
    ):
        open_output(path, "resume", ["x", "y"], ["m"], fingerprints=fingerprints([hotter], task))
    # under another name it is another annotator: both kept
    n = hotter.model_copy(update={"name": "n"})
    open_output(path, "resume", ["x", "y"], ["n"], fingerprints=fingerprints([n], task))
    kept = table_fingerprints(path)
    assert kept == {**fingerprints([m], task), **fingerprints([n], task)}
    # a table written before fingerprints were kept has none to compare: resumed, and they are kept from then on
    manifest = out.root.join("manifest.json")
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "fingerprints"}))
    assert table_fingerprints(path) == {}
    open_output(path, "resume", ["x", "y"], ["m"], fingerprints=fingerprints([hotter], task))
    assert table_fingerprints(path) == fingerprints([hotter], task)
    assert read_annotation_table(path).num_rows == 1


def test_modes_and_label_mismatch(tmp_path):
    path = str(tmp_path / "o")
    out = open_output(path, "resume", ["x", "y"], ["m"])
    write_part(out.parts, _rows(["a"]))
    with pytest.raises(ConfigError, match="holds a table for labels"):
        open_output(path, "resume", ["x", "z"], ["m"])
    with pytest.raises(ConfigError, match="mode is 'error'"):
        open_output(path, "error", ["x", "y"], ["m"])
    out = open_output(path, "overwrite", ["x", "z"], ["m"])
    assert read_annotation_table(out.root).num_rows == 0
    assert json.loads(out.root.join("manifest.json").read_text())["labels"] == ["x", "z"]


def test_written_schema(tmp_path):
    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    write_part(out.parts, _rows(["a"]))
    t = read_annotation_table(out.root)
    assert t.schema.equals(schema.ANNOTATION_SCHEMA)
    assert np.all(t.column("n_invalid").to_numpy() == 0)


def test_compaction_keeps_every_pair_once_even_when_interrupted(tmp_path):
    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    for ids in (["a", "b"], ["c"], ["d", "e"]):
        write_part(out.parts, _rows(ids), bucket=2)
    write_part(out.parts, _rows(["z"]), bucket=3)
    before = sorted(read_annotation_table(out.root).column("sample_id").to_pylist())
    # A compaction interrupted between writing its file and deleting the parts it holds: the
    # data file is there and so are its members; readers must still see each pair once.
    import shutil

    keep = tmp_path / "keep"
    shutil.copytree(tmp_path / "o" / "parts", keep)
    assert compact_bucket(out.parts, 2) == 3
    data = [i.base_name for i in out.parts.list(prefix="data-b00002-")]
    assert len(data) == 1 and len(out.parts.list(prefix="part-b00002-")) == 0
    for f in keep.iterdir():  # bring the deleted members back
        if not (tmp_path / "o" / "parts" / f.name).exists():
            shutil.copy(f, tmp_path / "o" / "parts" / f.name)
    assert len(out.parts.list(prefix="part-b00002-")) == 3
    assert sorted(read_annotation_table(out.root).column("sample_id").to_pylist()) == before
    files, members = table_files(out.parts)
    assert len(members) == 3 and len(files) == 2  # the data file and bucket 3's part
    assert DoneIndex(out.parts).mask("m", hash_ids(["a", "e", "z"]), 2).tolist() == [True, True, False]
    open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])  # reopening deletes the leftovers
    assert len(out.parts.list(prefix="part-b00002-")) == 0
    assert sorted(read_annotation_table(out.root).column("sample_id").to_pylist()) == before
    assert compact_bucket(out.parts, 3) == 0  # a single part is left as it is


def test_a_small_output_is_compacted_in_this_process_and_a_larger_one_by_ray_tasks(tmp_path, monkeypatch):
    # Below LOCAL_COMPACT_BYTES no Ray task runs; above it, one per bucket (run on Ray in
    # tests/integration/test_label_pipeline.py::test_trec_subset_matches_the_recording_row_by_row).
    import ray

    from molal_ray.pipeline import output

    def no_ray(*args, **kwargs):
        raise AssertionError("compacted by Ray tasks")

    monkeypatch.setattr(ray, "remote", no_ray)
    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    for bucket, ids in ((0, ["a", "b"]), (0, ["c"]), (1, ["d"]), (1, ["e", "f"]), (1, ["g"])):
        write_part(out.parts, _rows(ids), bucket=bucket)
    before = sorted(read_annotation_table(out.root).column("sample_id").to_pylist())
    assert output.compact(out, 2, 0.25) == 5
    assert len(out.parts.list(prefix="part-")) == 0 and len(out.parts.list(prefix="data-")) == 2
    assert sorted(read_annotation_table(out.root).column("sample_id").to_pylist()) == before
    write_part(out.parts, _rows(["h"]), bucket=0)
    write_part(out.parts, _rows(["i"]), bucket=0)
    monkeypatch.setattr(output, "LOCAL_COMPACT_BYTES", 0)
    with pytest.raises(AssertionError, match="compacted by Ray tasks"):
        output.compact(out, 2, 0.25)


def test_a_uri_output_is_resolved_through_pyarrow(tmp_path):
    loc = resolve(f"file://{tmp_path}/o")
    out = open_output(loc, "resume", ["x", "y"], ["m"])
    write_part(out.parts, _rows(["a"]))
    assert read_annotation_table(f"file://{tmp_path}/o").num_rows == 1


def test_locations_keep_uri_options_and_write_whole_files(tmp_path):
    loc = resolve("s3://bucket/out?endpoint_override=127.0.0.1:9&scheme=http")
    assert loc.path == "bucket/out" and not loc.is_local
    part = loc.join("parts", "p.parquet")
    assert part.path == "bucket/out/parts/p.parquet"
    assert part.uri == "s3://bucket/out/parts/p.parquet?endpoint_override=127.0.0.1:9&scheme=http"
    assert loc.at("bucket/out/train/ckpt").uri == "s3://bucket/out/train/ckpt?endpoint_override=127.0.0.1:9&scheme=http"
    local = resolve(tmp_path / "x")
    assert local.is_local and local.path == str(tmp_path / "x")
    f = local.join("a.json")
    local.mkdirs()
    with pytest.raises(RuntimeError):
        with f.open_write() as out:
            out.write(b"half")
            raise RuntimeError("the writer dies")
    assert not f.exists() and not local.list(prefix=".tmp-")  # nothing half-written is left
    f.write_json({"a": 1})
    assert f.read_json() == {"a": 1}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_an_unreadable_part_is_a_clear_error_and_a_reopened_folder_sets_it_aside(tmp_path, caplog):
    import logging

    from molal_ray.exceptions import SchemaError
    from molal_ray.pipeline.output import iter_annotation_table

    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    write_part(out.parts, _rows(["a", "b"]), bucket=0)
    bad = write_part(out.parts, _rows(["c", "d"]), bucket=1)
    _truncate(tmp_path / "o" / "parts" / bad.name)
    name = bad.name
    for read in (
        lambda: read_annotation_table(tmp_path / "o"),
        lambda: list(iter_annotation_table(tmp_path / "o")),
        lambda: DoneIndex(out.parts).mask("m", hash_ids(["c"]), bucket=1),
    ):
        with pytest.raises(SchemaError, match=rf"1 file\(s\) cannot be read: {name} \(.*\)\. Resuming the label job"):
            read()
    with caplog.at_level(logging.WARNING, logger="molal_ray"):
        out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])  # what a resumed job does first
    assert any(name in r.message and "asked again" in r.message for r in caplog.records)
    assert (tmp_path / "o" / "unreadable" / name).is_file() and not (tmp_path / "o" / "parts" / name).exists()
    assert sorted(read_annotation_table(tmp_path / "o").column(schema.SAMPLE_ID).to_pylist()) == ["a", "b"]
    assert not DoneIndex(out.parts).mask("m", hash_ids(["c"]), bucket=1).any()  # its pairs are asked again


def test_an_unreadable_table_file_is_a_clear_error_from_aggregate(tmp_path):
    from click.testing import CliRunner

    from molal_ray.cli import main

    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    compact_target = write_part(out.parts, _rows(["a", "b"]), bucket=0)
    write_part(out.parts, _rows(["c"]), bucket=0)
    assert compact_bucket(out.parts, 0) == 2
    (data,) = [p for p in (tmp_path / "o" / "parts").iterdir() if p.name.startswith("data-")]
    assert compact_target.name not in [p.name for p in (tmp_path / "o" / "parts").iterdir()]
    _truncate(data)  # a compacted file: its footer lists the parts it holds
    (tmp_path / "gold.csv").write_text("sample_id,label\na,x\n")
    r = CliRunner().invoke(
        main,
        [
            "aggregate",
            "--annotations",
            str(tmp_path / "o"),
            "--gold",
            str(tmp_path / "gold.csv"),
            "--labels",
            "x,y",
            "--out",
            str(tmp_path / "agg.parquet"),
        ],
    )
    assert r.exit_code == 2 and f"{data.name} (" in r.output and "cannot be read" in r.output, r.output
    assert "Traceback" not in r.output
    single = tmp_path / "one.parquet"
    single.write_bytes(b"PAR1 not really")
    r = CliRunner().invoke(
        main,
        [
            "aggregate",
            "--annotations",
            str(single),
            "--gold",
            str(tmp_path / "gold.csv"),
            "--labels",
            "x,y",
            "--out",
            str(tmp_path / "agg.parquet"),
        ],
    )
    assert r.exit_code == 2 and "one.parquet" in r.output and "Traceback" not in r.output, r.output


def test_a_write_that_fails_names_the_file_not_its_temporary(tmp_path):
    from molal_ray.storage import resolve

    target = tmp_path / "missing" / "part.parquet"
    with pytest.raises(FileNotFoundError) as err:
        resolve(str(target)).write_text("x")
    assert str(target) in str(err.value) and ".tmp-" not in str(err.value)
