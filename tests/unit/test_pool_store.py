"""The prepared pool without Ray: bucket files, row keys and numbers, fetches by key, the one rule
for repeated ids (shared by the label job and the loop)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from molal_ray import schema
from molal_ray.exceptions import SchemaError
from molal_ray.pipeline.pool import RAW_SCHEMA
from molal_ray.pipeline.pool_store import (
    BUCKET,
    MANIFEST,
    ROW_GROUP_ROWS,
    PreparedPool,
    prepare_with_bucket,
    read_row_groups,
    write_bucket,
)
from molal_ray.pipeline.prepare import resolve_duplicates, split_bucket
from molal_ray.storage import resolve


def _raw(rows):
    ids, texts, sources = zip(*rows)
    return pa.table(
        {
            "_raw_id": [None if i is None else i.encode() for i in ids],
            "_raw_text": [None if t is None else t.encode() for t in texts],
            "_source": list(sources),
            "_read_error": [None] * len(rows),
        },
        schema=RAW_SCHEMA,
    )


def test_a_repeated_id_keeps_its_first_usable_copy_rows_compared_as_numbers():
    # rows 9 and 10 of one file: as strings "f:10" < "f:9", as rows 9 comes first
    t = prepare_with_bucket(_raw([("a", "row ten", "f:10"), ("a", "row nine", "f:9")]), 100, 1)
    for order in ([0, 1], [1, 0]):
        out = {r["sample_id"]: r for r in resolve_duplicates(t.take(order)).to_pylist()}
        assert out["a"]["text"] == "row nine" and out["a"]["_source"] == "f:9"
        assert out["a#dup1"]["_source"] == "f:10" and out["a#dup1"]["pool_error"].startswith("duplicate_id")


def test_a_flagged_first_copy_gives_way_to_a_usable_later_one():
    t = prepare_with_bucket(_raw([("a", "", "f:1"), ("a", "fine", "f:2"), ("a", "also fine", "f:3")]), 100, 1)
    out = {r["sample_id"]: r for r in resolve_duplicates(t).to_pylist()}
    assert out["a"]["text"] == "fine" and out["a"]["pool_error"] is None
    assert out["a#dup1"]["_source"] == "f:1" and out["a#dup2"]["_source"] == "f:3"
    assert all(out[k]["pool_error"].startswith("duplicate_id") for k in ("a#dup1", "a#dup2"))
    only_bad = prepare_with_bucket(_raw([("b", "", "f:1"), ("b", " ", "f:2")]), 100, 1)
    out = {r["sample_id"]: r for r in resolve_duplicates(only_bad).to_pylist()}
    assert out["b"]["pool_error"].startswith("empty_text") and out["b#dup1"]["pool_error"].startswith("duplicate")


def _pool(tmp_path, rows, buckets=3):
    folder = resolve(tmp_path / "pool")
    folder.mkdirs()
    t = prepare_with_bucket(_raw(rows), 1000, buckets)
    usable, flagged = [0] * buckets, [0] * buckets
    for k in range(buckets):
        part = t.filter(pa.array(t.column(BUCKET).to_numpy() == k))
        if part.num_rows:
            c = write_bucket(part, folder).to_pylist()[0]
            usable[k], flagged[k] = c["usable"], c["flagged"]
    folder.join(MANIFEST).write_json(
        {
            "fingerprint": {"format_version": 2},
            "buckets": buckets,
            "usable": usable,
            "flagged": flagged,
            "flagged_by_kind": {},
        }
    )
    return PreparedPool.open(folder)


def test_keys_numbers_and_fetches(tmp_path):
    rows = [(f"id{i}", f"text {i}", f"f:{i}") for i in range(50)] + [("bad", "", "f:50"), ("id3", "again", "f:51")]
    pool = _pool(tmp_path, rows)
    assert pool.n_usable == 50 and pool.n_flagged == 2 and pool.n_rows == 52
    dense = np.arange(50)
    keys = pool.keys_of(dense)
    assert len(set(keys.tolist())) == 50 and pool.dense_of(keys).tolist() == dense.tolist()
    got = pool.fetch(keys[::-1][:10], columns=(schema.SAMPLE_ID, schema.TEXT))
    assert got.column("_row").to_pylist() == keys[::-1][:10].tolist()
    for sid, text in zip(got.column("sample_id").to_pylist(), got.column("text").to_pylist()):
        assert text == "text " + sid[2:]
    assert pool.fetch([keys[3], keys[3]]).num_rows == 2
    found = pool.find(["id7", "id3", "bad", "nope"])
    assert sorted(found.column("sample_id").to_pylist()) == ["id3", "id7"]
    assert (
        pool.fetch(found.column("_row").to_numpy()).column("sample_id").to_pylist()
        == found.column("sample_id").to_pylist()
    )
    flagged = pa.Table.from_batches(list(pool.iter_flagged()))
    assert sorted(flagged.column("sample_id").to_pylist()) == ["bad", "id3#dup1"]
    with pytest.raises(SchemaError, match="not usable rows"):
        pool.fetch([int(keys.max()) + 1])
    with pytest.raises(SchemaError, match="row numbers outside"):
        pool.keys_of(np.array([50]))


def test_read_items_cover_every_row_group_or_just_the_wanted_rows(tmp_path):
    n = 3 * ROW_GROUP_ROWS + 10
    pool = _pool(tmp_path, [(f"s{i:06d}", f"t{i:06d}", f"f:{i}") for i in range(n)], buckets=1)
    items = pool.read_items(("bucket",))
    assert [(i["file"], i["row_groups"]) for i in items] == [("bucket-00000.parquet", [g]) for g in range(4)]
    # Several row groups a read (predict's blocks): each once, in order, the last read shorter.
    assert [i["row_groups"] for i in pool.read_items(("bucket",), groups_per_read=3)] == [[0, 1, 2], [3]]
    whole = read_row_groups(pa.Table.from_pylist(pool.read_items(groups_per_read=3)), pool.folder, ["sample_id"])
    assert whole.column("sample_id").to_pylist() == [f"s{i:06d}" for i in range(n)]
    dense = np.array([1, 3 * ROW_GROUP_ROWS + 2, ROW_GROUP_ROWS - 1])  # row groups 0 and 3, not 1 or 2
    items = pool.read_items(keys=pool.keys_of(dense))
    assert [i["row_groups"] for i in items] == [[0, 3]]
    got = read_row_groups(pa.Table.from_pylist(items), pool.folder, ["sample_id", "text"])
    assert got.column("sample_id").to_pylist() == [f"s{i:06d}" for i in sorted(dense)]


def test_bucket_files_do_not_depend_on_row_order(tmp_path):
    rows = [(f"id{i}", f"text {i}", f"f:{i}") for i in range(30)] + [("id1", "dup", "f:30")]
    t = prepare_with_bucket(_raw(rows), 1000, 1)
    a = split_bucket(t, 0)
    b = split_bucket(t.take(np.random.default_rng(0).permutation(t.num_rows)), 0)
    assert a[0].equals(b[0]) and a[1].equals(b[1])


def test_a_small_pool_is_prepared_in_this_process_without_ray(tmp_path, monkeypatch):
    # Below LOCAL_PREPARE_BYTES no Ray Data task runs; the files are the same as Ray Data's
    # (tests/integration/test_label_pipeline.py compares them).
    import json

    from molal_ray.config import PoolConfig
    from molal_ray.pipeline import pool_store

    def no_ray_data(*args, **kwargs):
        raise AssertionError("a small pool went through Ray Data")

    monkeypatch.setattr(pool_store, "prepare_with_ray_data", no_ray_data)
    lines = [json.dumps({"id": f"q{i}", "text": f"question {i}"}) for i in range(40)]
    lines += ['{"id": "q3", "text": "again"}', '{"id": "blank", "text": ""}']
    (tmp_path / "pool.jsonl").write_text("\n".join(lines) + "\n")
    cfg = PoolConfig(path=str(tmp_path / "pool.jsonl"), buckets=2)
    pool = PreparedPool.build(cfg, tmp_path / "prep")
    assert (pool.n_usable, pool.n_flagged, pool.manifest.flagged_by_kind) == (
        40,
        2,
        {"duplicate_id": 1, "empty_text": 1},
    )
    assert sorted(pool.fetch(pool.keys_of(np.arange(40))).column("sample_id").to_pylist()) == sorted(
        f"q{i}" for i in range(40)
    )
    assert PreparedPool.build(cfg, tmp_path / "prep").manifest == pool.manifest  # reused
    monkeypatch.setattr(pool_store, "LOCAL_PREPARE_BYTES", 0)  # a larger pool: Ray Data's tasks
    with pytest.raises(AssertionError, match="went through Ray Data"):
        PreparedPool.build(cfg, tmp_path / "prep2")


@pytest.mark.parametrize("name", ["pool.jsonl.gz", "pool.csv.gz"])
def test_a_file_whose_stream_breaks_part_way_keeps_its_rows_read_and_flags_the_rest(tmp_path, name):
    # A truncated .gz (a copy cut short): the rows before the break are kept, but for those of the
    # one read that fails (READ_CHUNK); one flagged bad_row stands for the rest and names the
    # error; the job does not fail. The CSV parser reads ahead, and an error met there used to
    # drop the blocks before it: all, some or none of the rows were kept, with the threads' timing.
    import gzip
    import json
    import zlib

    from molal_ray.config import PoolConfig
    from molal_ray.pipeline.pool import READ_CHUNK

    n = 250_000  # 25 MB of text, 12 MB of it before the break: several reads and CSV blocks
    if name.endswith(".jsonl.gz"):
        body = "".join(json.dumps({"id": f"q{i}", "text": f"question number {i} " * 4}) + "\n" for i in range(n))
    else:
        body = "id,text\n" + "".join(f"q{i},{f'question number {i} ' * 4}\n" for i in range(n))
    raw = gzip.compress(body.encode())
    (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    header = int(name.endswith(".csv.gz"))
    before_break = -header + zlib.decompressobj(wbits=31).decompress(raw[: len(raw) // 2]).count(b"\n")
    pool = PreparedPool.build(PoolConfig(path=str(tmp_path / name)), tmp_path / "prep")
    row_bytes = len(body) / n
    assert before_break - READ_CHUNK / row_bytes - 1 <= pool.n_usable <= before_break
    assert pool.manifest.flagged_by_kind == {"bad_row": 1}
    (flagged,) = pa.Table.from_batches(list(pool.iter_flagged())).to_pylist()
    assert flagged["pool_error"].startswith("bad_row: the file cannot be read from here on (")
    assert "ompressed" in flagged["pool_error"] or "gzip" in flagged["pool_error"].lower()
    assert flagged["_source"] == f"{name}:{pool.n_usable + 1 + header}"  # where the rest begins
    ids = sorted(pool.fetch(pool.keys_of(np.arange(pool.n_usable))).column("sample_id").to_pylist())
    assert ids == sorted(f"q{i}" for i in range(pool.n_usable))  # the rows read, each once, none lost
