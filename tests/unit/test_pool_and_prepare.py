"""Pool readers and row checks, without Ray: every row comes out, bad ones flagged."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from molal_ray.config import PoolConfig
from molal_ray.exceptions import ConfigError
from molal_ray.ids import hash_ids
from molal_ray.pipeline.pool import _read_csv, _read_jsonl, _read_parquet, detect_format
from molal_ray.pipeline.prepare import PREPARED_SCHEMA, prepare_batch, resolve_duplicates


def _prepared(tables, max_chars=50):
    return prepare_batch(pa.concat_tables(list(tables)), max_chars).to_pylist()


def test_jsonl_bad_rows_are_flagged_not_dropped():
    lines = [
        json.dumps({"id": "a", "text": "fine"}).encode(),
        json.dumps({"id": "b", "text": ""}).encode(),
        json.dumps({"id": "c", "text": None}).encode(),
        b'{"id": "d", "text": "caf\xe9 latin-1"}',
        json.dumps({"text": "no id here"}).encode(),
        b"{not json",
        json.dumps({"id": "g", "body": "wrong column"}).encode(),
        json.dumps({"id": 7, "text": "x" * 80}).encode(),
        b"",
    ]
    rows = _prepared(_read_jsonl(io.BytesIO(b"\n".join(lines)), "p.jsonl", "id", "text"))
    assert len(rows) == 8  # the blank line is not a row
    by = {r["_source"]: r for r in rows}
    assert by["p.jsonl:1"]["pool_error"] is None and by["p.jsonl:1"]["text"] == "fine"
    assert by["p.jsonl:2"]["pool_error"].startswith("empty_text")
    assert by["p.jsonl:3"]["pool_error"].startswith("empty_text")
    assert by["p.jsonl:4"]["pool_error"].startswith("invalid_utf8")
    assert by["p.jsonl:5"]["pool_error"].startswith("missing_id")
    assert by["p.jsonl:5"]["sample_id"] == "missing_id:p.jsonl:5"
    assert by["p.jsonl:6"]["pool_error"].startswith("bad_json")
    assert by["p.jsonl:7"]["pool_error"].startswith("missing_column")
    long = by["p.jsonl:8"]
    assert long["sample_id"] == "7" and long["pool_error"] is None
    assert len(long["text"]) == 50 and long["pool_warning"].startswith("truncated")


def test_jsonl_rows_across_read_chunks(monkeypatch):
    import molal_ray.pipeline.pool as pool

    monkeypatch.setattr(pool, "READ_CHUNK", 7)
    data = b"\n".join(json.dumps({"id": str(i), "text": f"t{i}"}).encode() for i in range(20))
    rows = _prepared(_read_jsonl(io.BytesIO(data), "p", "id", "text"))
    assert [r["sample_id"] for r in rows] == [str(i) for i in range(20)]
    assert all(r["pool_error"] is None for r in rows)


def test_csv_bad_utf8_cell_flags_one_row():
    data = b"id,text\n1,hello\n2,caf\xe9\n3,\n,orphan\n"
    rows = _prepared(_read_csv(pa.BufferReader(data), "p.csv", "id", "text"))
    assert [r["_source"] for r in rows] == ["p.csv:2", "p.csv:3", "p.csv:4", "p.csv:5"]
    assert rows[0]["pool_error"] is None
    assert rows[1]["pool_error"].startswith("invalid_utf8")
    assert rows[2]["pool_error"].startswith("empty_text")
    assert rows[3]["pool_error"].startswith("missing_id")


def test_csv_records_with_the_wrong_number_of_fields_are_flagged_rows_in_their_place():
    data = b'id,text\na,hello\nb,"two\nlines"\nc,x,extra\nd,ok\ne\n'
    rows = _prepared(_read_csv(pa.BufferReader(data), "p.csv", "id", "text"))
    by = {r["_source"]: r for r in rows}
    assert sorted(by) == ["p.csv:2", "p.csv:3", "p.csv:4", "p.csv:5", "p.csv:6"]  # every record, once
    assert [by[f"p.csv:{n}"]["sample_id"] for n in (2, 3, 5)] == ["a", "b", "d"]
    assert by["p.csv:3"]["text"] == "two\nlines" and by["p.csv:5"]["pool_error"] is None
    assert by["p.csv:4"]["pool_error"] == "bad_row: 3 field(s) where the header has 2"
    assert by["p.csv:6"]["pool_error"] == "bad_row: 1 field(s) where the header has 2"
    assert by["p.csv:4"]["sample_id"] == "missing_id:p.csv:4" and by["p.csv:4"]["text"] is None


def test_csv_bad_records_across_read_blocks_keep_every_row_number():
    lines, expected = [b"id,text"], {}
    for i in range(300_000):  # about 9 MB: three of the reader's 4 MiB blocks
        if i % 97 == 5:
            lines.append(b"x%d,a,b" % i)
            expected[i + 2] = None
        else:
            lines.append(b"g%d,the text of a good row" % i)
            expected[i + 2] = f"g{i}"
    got = {}
    for t in _read_csv(pa.BufferReader(b"\n".join(lines) + b"\n"), "p.csv", "id", "text"):
        for r in t.to_pylist():
            n = int(r["_source"].split(":")[1])
            assert n not in got
            got[n] = None if r["_read_error"] else r["_raw_id"].decode()
    assert got == expected


def test_a_damaged_parquet_row_group_flags_its_rows_and_keeps_the_others():
    buf = io.BytesIO()
    texts = [f"question number {i} " * 4 for i in range(60)]
    pq.write_table(
        pa.table({"id": [f"q{i}" for i in range(60)], "text": texts}),
        buf,
        row_group_size=30,
        compression="none",
        use_dictionary=False,
    )
    raw = bytearray(buf.getvalue())
    chunk = pq.ParquetFile(io.BytesIO(bytes(raw))).metadata.row_group(1).column(1)  # row group 1's texts
    start = chunk.data_page_offset
    raw[start : start + 40] = b"\xff" * 40  # its page header: unreadable
    rows = _prepared(_read_parquet(pa.BufferReader(bytes(raw)), "p.parquet", "id", "text"))
    assert [r["_source"] for r in rows] == [f"p.parquet:{i}" for i in range(1, 61)]  # every row, in its place
    assert all(r["pool_error"] is None for r in rows[:30]) and [r["sample_id"] for r in rows[:30]] == [
        f"q{i}" for i in range(30)
    ]
    assert all(r["pool_error"].startswith("bad_row: row group 1 cannot be read (") for r in rows[30:])


def test_parquet_missing_text_column_flags_rows():
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["a", "b"], "body": ["x", "y"]}), buf)
    rows = _prepared(_read_parquet(pa.BufferReader(buf.getvalue()), "p.parquet", "id", "text"))
    assert [r["pool_error"].split(":")[0] for r in rows] == ["missing_column"] * 2


def test_parquet_integer_ids():
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [3, 4], "text": ["x", "y"]}), buf)
    rows = _prepared(_read_parquet(pa.BufferReader(buf.getvalue()), "p.parquet", "id", "text"))
    assert [r["sample_id"] for r in rows] == ["3", "4"]


def test_duplicates_resolved_deterministically_first_in_file_order_wins():
    table = prepare_batch(
        pa.concat_tables(
            list(
                _read_jsonl(
                    io.BytesIO(
                        b"\n".join(
                            json.dumps({"id": i, "text": t}).encode()
                            for i, t in [("a", "one"), ("b", "two"), ("a", "three"), ("a", "one")]
                        )
                    ),
                    "p",
                    "id",
                    "text",
                )
            )
        ),
        100,
    )
    dup_rows = table.filter(pa.array([i == "a" for i in table.column("sample_id").to_pylist()]))
    # Whatever order the rows arrive in, the result is the same.
    fwd = resolve_duplicates(dup_rows).to_pylist()
    rev = resolve_duplicates(dup_rows.take(list(reversed(range(dup_rows.num_rows))))).to_pylist()
    key = lambda r: r["sample_id"]  # noqa: E731
    assert sorted(fwd, key=key) == sorted(rev, key=key)
    by = {r["sample_id"]: r for r in fwd}
    assert set(by) == {"a", "a#dup1", "a#dup2"}
    assert by["a"]["text"] == "one" and by["a"]["pool_error"] is None
    assert by["a#dup1"]["pool_error"].startswith("duplicate_id") and "p:3" in by["a#dup1"]["pool_error"]
    assert by["a#dup2"]["_id_hash"] == hash_ids(["a#dup2"])[0]
    assert resolve_duplicates(dup_rows).schema == PREPARED_SCHEMA


def test_hash_ids_is_stable():
    # Fixed values: a change of hash function would silently break resume of old outputs.
    assert hash_ids(["trec-00000"]).tolist() == hash_ids(["trec-00000"]).tolist()
    assert hash_ids(["a", "b"]).dtype.name == "uint64"
    assert hash_ids(["a"])[0] != hash_ids(["b"])[0]


@pytest.mark.parametrize("name, fmt", [("x.parquet", "parquet"), ("x.jsonl.gz", "jsonl"), ("x.csv", "csv")])
def test_detect_format(name, fmt):
    assert detect_format(name) == fmt


def test_detect_format_unknown():
    with pytest.raises(ConfigError, match="pool.format"):
        detect_format("x.dat")
    with pytest.raises(ConfigError, match="is a spreadsheet workbook, which is not read; save it as CSV"):
        detect_format("x.xlsx")


def test_gzip_jsonl_is_read_by_the_datasource_path():
    # The datasource opens .gz through Ray's decompressing stream; the reader itself sees bytes.
    raw = gzip.compress(b'{"id": "a", "text": "t"}\n')
    rows = _prepared(_read_jsonl(io.BytesIO(gzip.decompress(raw)), "p.jsonl.gz", "id", "text"))
    assert rows[0]["sample_id"] == "a"
    assert PoolConfig(path="p.jsonl.gz").format == "auto"


class _BreaksAfter:
    """A stream that fails (as a truncated .gz does) once ``size`` bytes of it have been read."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.at = data, size, 0

    def read(self, n: int = -1) -> bytes:
        if self.at >= self.size:
            raise OSError("Truncated compressed stream")
        out = self.data[self.at : min(self.at + n, self.size)]
        self.at += len(out)
        return out


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
def test_csv_that_breaks_in_a_quoted_field_keeps_its_whole_records_and_flags_the_rest(monkeypatch, chunk):
    # Records with line breaks and doubled quotes inside quoted fields; the stream breaks in the
    # middle of the sixth record's quoted text. The five before it are kept whole (the cut one is
    # not read as a shorter text), one row flagged where the rest begins, whatever the read size.
    import molal_ray.pipeline.pool as pool

    monkeypatch.setattr(pool, "READ_CHUNK", chunk)
    records = [b'%d,"line one of %d\nsays ""hi""\nand ends"' % (i, i) for i in range(10)]
    data = b"id,text\n" + b"\n".join(records) + b"\n"
    size = data.index(b"says", data.index(b"line one of 5"))
    rows = _prepared(_read_csv(_BreaksAfter(data, size), "p.csv", "id", "text"), max_chars=100)
    assert [r["text"] for r in rows[:-1]] == [f'line one of {i}\nsays "hi"\nand ends' for i in range(5)]
    assert rows[-1]["_source"] == "p.csv:7"
    assert rows[-1]["pool_error"] == "bad_row: the file cannot be read from here on (Truncated compressed stream)"


def test_csv_that_breaks_before_its_first_whole_record_is_one_flagged_row(tmp_path, monkeypatch):
    # A small .csv.gz cut short: the one read that fails holds all of it, the parser gets an
    # empty stream; one flagged row names the break, not the parser's "Empty CSV file".
    import molal_ray.pipeline.pool as pool_module
    from molal_ray.config import PoolConfig
    from molal_ray.pipeline.pool_store import PreparedPool

    monkeypatch.setattr(pool_module, "READ_CHUNK", 1 << 20)  # more than the whole file

    raw = gzip.compress(b"id,text\n" + b"".join(b"q%d,question number %d\n" % (i, i) for i in range(5000)))
    (tmp_path / "pool.csv.gz").write_bytes(raw[: len(raw) // 2])
    pool = PreparedPool.build(PoolConfig(path=str(tmp_path / "pool.csv.gz")), tmp_path / "prep")
    assert pool.n_usable == 0 and pool.manifest.flagged_by_kind == {"bad_row": 1}
    (flagged,) = pa.Table.from_batches(list(pool.iter_flagged())).to_pylist()
    assert flagged["_source"] == "pool.csv.gz:1"
    assert flagged["pool_error"].startswith("bad_row: the file cannot be read from here on (")
    assert "Empty CSV" not in flagged["pool_error"]
