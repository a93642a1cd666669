from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from molal_ray import schema
from molal_ray.exceptions import ConfigError
from molal_ray.pipeline.annotate_stage import error_rows
from molal_ray.pipeline.output import is_done, load_done, open_output, part_name, read_annotation_table, write_part
from molal_ray.pipeline.prepare import hash_ids


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
    assert not list(out.parts.glob(".tmp-*"))


def test_stale_temporary_parts_are_removed_on_reopen(tmp_path):
    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    (out.parts / ".tmp-dead-part.parquet").write_bytes(b"half a file")
    write_part(out.parts, _rows(["a"]))
    assert read_annotation_table(out.root).num_rows == 1  # the stale file is not read
    open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    assert not list(out.parts.glob(".tmp-*"))


def test_done_set_per_annotator(tmp_path):
    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m", "n"])
    write_part(out.parts, pa.concat_tables([_rows(["a", "b"], "m"), _rows(["c"], "n")]))
    done = load_done(out)
    h = hash_ids(["a", "b", "c", "d"])
    assert is_done(done["m"], h).tolist() == [True, True, False, False]
    assert is_done(done["n"], h).tolist() == [False, False, True, False]
    assert is_done(done.get("o"), h).tolist() == [False] * 4


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
    assert json.loads((out.root / "manifest.json").read_text())["labels"] == ["x", "z"]


def test_written_schema(tmp_path):
    out = open_output(str(tmp_path / "o"), "resume", ["x", "y"], ["m"])
    write_part(out.parts, _rows(["a"]))
    t = read_annotation_table(out.root)
    assert t.schema.equals(schema.ANNOTATION_SCHEMA)
    assert np.all(t.column("n_invalid").to_numpy() == 0)
