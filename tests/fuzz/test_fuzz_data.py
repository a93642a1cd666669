"""Generated bad pools, gold files and annotation tables: each is a clear error (one of ours) or
rows that come out, bad ones flagged; never a traceback, never a lost row. Seeds are fixed."""

from __future__ import annotations

import gzip
import io
import json
import random

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from molal_ray.exceptions import MolalError
from molal_ray.testing.synthetic import synthetic_table
from tests.conftest import TREC

N_ROWS = 20
CASES = 40


def _good_rows() -> list[dict]:
    return pq.read_table(TREC / "pool.parquet").slice(0, N_ROWS).select(["id", "text"]).to_pylist()


def _encode(fmt: str, rows: list[dict]) -> bytes:
    if fmt == "jsonl":
        return b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    if fmt == "csv":
        import csv

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["id", "text"])
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().encode()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def _corrupt(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    op = rng.choice(["truncate", "flip", "insert", "nul", "duplicate", "drop-head", "other-format", "gzip", "quote"])
    b = bytearray(raw)
    if op == "truncate":
        return op, bytes(b[: rng.randrange(len(b))])
    if op == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return op, bytes(b)
    if op == "insert":
        at = rng.randrange(len(b))
        return op, bytes(b[:at]) + rng.choice([b",", b'"', b"\n", b"{", b"\r\n", b",,,,", b'"a,"b"']) + bytes(b[at:])
    if op == "nul":
        at = rng.randrange(len(b))
        return op, bytes(b[:at]) + b"\x00" + bytes(b[at:])
    if op == "duplicate":
        lines = raw.split(b"\n")
        k = rng.randrange(len(lines))
        return op, b"\n".join(lines[: k + 1] + lines[k:])
    if op == "drop-head":
        return op, bytes(b[rng.randint(1, 40) :])
    if op == "other-format":
        return op, _encode(rng.choice(["jsonl", "csv", "parquet"]), _good_rows())
    if op == "gzip":
        return op, gzip.compress(raw)
    return op, raw.replace(b'"', b"", 1) + b'"unterminated'


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_bad_pool_files_are_a_clear_error_or_every_row_flagged_or_read(fmt, tmp_path):
    from molal_ray.pipeline.pool import _READERS
    from molal_ray.pipeline.prepare import prepare_batch
    from molal_ray.preflight import check_pool_file

    fs = pafs.LocalFileSystem()
    rng = random.Random(f"pool-{fmt}")
    base = _encode(fmt, _good_rows())
    outcomes = {"refused": 0, "read": 0}
    for i in range(CASES):
        op, raw = _corrupt(base, rng)
        path = tmp_path / f"pool-{i}.{fmt}"
        path.write_bytes(raw)
        case = f"{fmt} case {i} ({op})"
        try:
            check_pool_file(fs, str(path), fmt, "id", "text")  # what check-config, label and run do first
        except ValueError as exc:
            assert str(exc) and "\n" not in str(exc), case
            outcomes["refused"] += 1
            continue
        try:
            with fs.open_input_file(str(path)) if fmt == "parquet" else fs.open_input_stream(str(path)) as f:
                tables = list(_READERS[fmt](f, path.name, "id", "text"))
        except MolalError as exc:  # a file that cannot be read past its head: one clear line
            assert path.name in str(exc) and "\n" not in str(exc), case
            outcomes["refused"] += 1
            continue
        rows = prepare_batch(pa.concat_tables(tables), 1000).to_pylist() if tables else []
        assert all((r["pool_error"] is None) == (r["text"] is not None) for r in rows), case
        assert len({r["_source"] for r in rows}) == len(rows), case  # each row under a place of its own
        if op == "duplicate" and fmt != "parquet":
            assert len(rows) >= N_ROWS, case  # nothing lost
        outcomes["read"] += 1
    assert outcomes["refused"] and outcomes["read"], outcomes


GOLD_CASES = [
    b"",
    b"sample_id,label\n",
    b"label,sample_id\nentity,x\n",
    b"id,label\nx,entity\n",
    b"sample_id\nx\n",
    b"sample_id,label\nx,not-a-label\n",
    b"sample_id,label\nx,\n",
    b"sample_id,label\n,entity\n",
    b"\xef\xbb\xbfsample_id,label\ns00000001,a\n",
    b"sample_id,label\nx,entity,extra\n",
    b"\x00\x01\x02\xff" * 50,
    b"sample_id,label\nx,entity\nx,human\n",
    b'sample_id,label\n"x,entity\n',
    b"PAR1....PAR1",
]


def test_bad_gold_files_are_clear_errors_or_read(tmp_path):
    from molal_ray.aggregation.api import load_gold

    rng = random.Random("gold")
    cases = list(GOLD_CASES)
    for _ in range(30):
        raw = bytearray(
            b"sample_id,label\n" + b"".join(b"s%08d,%s\n" % (i, rng.choice([b"a", b"b", b"c"])) for i in range(10))
        )
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.choice(b',"\n\x00x\xe9')
        cases.append(bytes(raw))
    for i, raw in enumerate(cases):
        path = tmp_path / f"gold-{i}.csv"
        path.write_bytes(raw)
        try:
            df = load_gold(path, ["a", "b", "c"])
        except MolalError as exc:
            assert str(exc) and len(str(exc).splitlines()) <= 3, (i, raw[:60], str(exc))
            continue
        assert set(df.columns) >= {"sample_id", "y"} and df["y"].between(0, 2).all(), (i, raw[:60])


def test_bad_annotation_tables_are_clear_errors_or_aggregate(tmp_path):
    from molal_ray.aggregation.api import aggregate
    from molal_ray.pipeline.output import read_annotation_table

    table, truth = synthetic_table(60, seed=1)
    n_classes = len(table.column("probs")[0].as_py())
    labels = [f"c{k}" for k in range(n_classes)]
    import pandas as pd

    gold = pd.DataFrame(
        {"sample_id": table.column("sample_id").unique().to_pylist()[:20], "y": [int(t) for t in truth[:20]]}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    good = buf.getvalue()
    rng = random.Random("tables")
    variants: list[tuple[str, bytes | pa.Table]] = []
    for i in range(20):
        op, raw = _corrupt(good, rng)
        variants.append((f"bytes {i} ({op})", raw))
    variants += [
        ("no probs column", table.drop(["probs"])),
        (
            "probs too short",
            table.set_column(
                table.schema.get_field_index("probs"),
                "probs",
                pa.array([p[:1] for p in table.column("probs").to_pylist()]),
            ),
        ),
        (
            "probs as text",
            table.set_column(
                table.schema.get_field_index("probs"),
                "probs",
                pa.array([str(p) for p in table.column("probs").to_pylist()]),
            ),
        ),
        (
            "nan probs",
            table.set_column(
                table.schema.get_field_index("probs"), "probs", pa.array([[float("nan")] * n_classes] * table.num_rows)
            ),
        ),
        ("empty", table.slice(0, 0)),
    ]
    for case, v in variants:
        path = tmp_path / "ann.parquet"
        if isinstance(v, bytes):
            path.write_bytes(v)
        else:
            pq.write_table(v, path)
        try:
            aggregate(read_annotation_table(path), gold, labels, "majority", validate=False, baselines=False)
        except MolalError as exc:
            assert str(exc) and len(str(exc).splitlines()) <= 3, (case, str(exc))
