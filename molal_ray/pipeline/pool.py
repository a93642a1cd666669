"""Read a pool of texts (Parquet, JSONL, CSV) as a Ray Dataset of raw rows, never whole.

Every format is read by one datasource that streams each file in chunks and keeps, per row,
its position (``file:row``): ids that are missing or duplicated are then flagged
deterministically, so a resumed run sees the same sample ids as the first. Text and id bytes
are kept raw here; :mod:`molal_ray.pipeline.prepare` decodes them and flags bad rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from molal_ray import schema
from molal_ray.config import PoolConfig
from molal_ray.exceptions import ConfigError, one_line

RAW_ID = "_raw_id"
RAW_TEXT = "_raw_text"
SOURCE = "_source"
READ_ERROR = "_read_error"
RAW_SCHEMA = pa.schema(
    [(RAW_ID, pa.binary()), (RAW_TEXT, pa.binary()), (SOURCE, pa.string()), (READ_ERROR, pa.string())]
)

EXTENSIONS = {
    "parquet": ["parquet"],
    "jsonl": ["jsonl", "jsonl.gz", "json", "json.gz", "ndjson"],
    "csv": ["csv", "csv.gz"],
}
# Files people often have that the pool does not read, and what they are.
UNREAD = {
    ("tsv", "tab", "tsv.gz"): "tab-separated values",
    ("xlsx", "xls", "ods", "numbers"): "a spreadsheet workbook",
}
ROWS_PER_BLOCK = 8192
# The size of one read of a JSON lines or CSV stream: a read that fails (a truncated .gz) loses
# what it had decompressed, so at most this much before a break is not kept.
READ_CHUNK = 64 << 10


def format_of(name: str) -> str | None:
    """The pool format a file's name says (its extension), or None."""
    low = name.lower()
    return next((fmt for fmt, exts in EXTENSIONS.items() if any(low.endswith("." + e) for e in exts)), None)


def detect_format(path: str) -> str:
    """The pool format from a file or folder's extension."""
    p = path.lower().rstrip("/")
    candidates = [p]
    if os.path.isdir(path):
        candidates = sorted(f.lower() for f in os.listdir(path) if not f.startswith((".", "_")))
    for c in candidates:
        fmt = format_of(c)
        if fmt is not None:
            return fmt
    for unread, what in UNREAD.items():
        if any(c.endswith("." + e) for c in candidates for e in unread):
            raise ConfigError(
                f"pool.path: {path!r} is {what}, which is not read; save it as CSV (commas), JSON lines or Parquet"
            )
    raise ConfigError(
        f"pool.format: cannot tell the format of {path!r} from its extension; "
        f"expected one of {sorted(EXTENSIONS)} (set pool.format)"
    )


def nested_type(t: pa.DataType) -> bool:
    """A list, struct or map type: values that are not text (their repr is not a text to label)."""
    return bool(pa.types.is_nested(t))


def _not_text(column: str, v: Any) -> str | None:
    """The flag of a JSON value that is a list or an object where text (or an id) is expected."""
    if isinstance(v, list | dict):
        return f"{schema.ERR_NOT_TEXT}: column {column!r} holds {'a list' if isinstance(v, list) else 'an object'}"
    return None


def _as_bytes(v: Any) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")
    if isinstance(v, float) and v != v:  # NaN from a CSV/pandas writer
        return None
    return str(v).encode("utf-8")


class _Rows:
    """Accumulates raw rows and cuts them into Arrow blocks."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {n: [] for n in RAW_SCHEMA.names}

    def add(self, raw_id: Any, raw_text: Any, source: str, error: str | None = None) -> None:
        self.cols[RAW_ID].append(_as_bytes(raw_id))
        self.cols[RAW_TEXT].append(_as_bytes(raw_text))
        self.cols[SOURCE].append(source)
        self.cols[READ_ERROR].append(error)

    def __len__(self) -> int:
        return len(self.cols[SOURCE])

    def flush(self) -> pa.Table:
        table = pa.table(self.cols, schema=RAW_SCHEMA)
        self.cols = {n: [] for n in RAW_SCHEMA.names}
        return table


def _unreadable_rest(name: str, where: str, exc: BaseException) -> pa.Table:
    """One flagged row standing for the rest of a file whose stream breaks part-way (a truncated
    or damaged ``.gz``): the rows read before it are kept, the file is named, nothing fails."""
    rows = _Rows()
    rows.add(
        None, None, f"{name}:{where}", f"{schema.ERR_BAD_ROW}: the file cannot be read from here on ({one_line(exc)})"
    )
    return rows.flush()


def _read_jsonl(f: Any, name: str, id_col: str, text_col: str) -> Iterator[pa.Table]:
    rows, rest, lineno = _Rows(), b"", 0
    while True:
        try:
            chunk = f.read(READ_CHUNK)
        except (pa.ArrowException, OSError, EOFError) as exc:
            if len(rows):
                yield rows.flush()
            yield _unreadable_rest(name, str(lineno + 1), exc)
            return
        data = rest + chunk
        lines = data.split(b"\n")
        rest = lines.pop() if chunk else b""
        for line in lines:
            lineno += 1
            src = f"{name}:{lineno}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8", "surrogateescape"))
            except ValueError as exc:
                rows.add(None, None, src, f"bad_json: {exc.msg if hasattr(exc, 'msg') else exc}")
                continue
            if not isinstance(obj, dict):
                rows.add(None, None, src, "bad_json: a line is not a JSON object")
                continue
            odd = _not_text(text_col, obj.get(text_col)) or _not_text(id_col, obj.get(id_col))
            if odd:
                rows.add(None, None, src, odd)
            else:
                rows.add(
                    obj.get(id_col),
                    obj.get(text_col),
                    src,
                    None if text_col in obj else f"missing_column: {text_col!r}",
                )
            if len(rows) >= ROWS_PER_BLOCK:
                yield rows.flush()
        if not chunk:
            break
    if len(rows):
        yield rows.flush()


class _UpToBreak:
    """A CSV byte stream handed out whole records at a time, that ends cleanly where it breaks.

    Arrow's CSV reader reads ahead of the blocks it has parsed, and a read error met ahead drops
    the blocks before it: a truncated ``.gz`` gave all, some or none of its rows depending on the
    threads' timing. Read through this, the reader sees the stream end after the last whole
    record before the error (a record cut by the break is not parsed as a shorter one, even inside
    a quoted field), and ``error`` holds the error for the caller to flag the rest.
    """

    def __init__(self, f: Any) -> None:
        self.f = f
        self.held = bytearray()  # read, not handed out yet
        self.quotes = 0  # parity of the '"' handed out: odd inside a quoted field
        self.ended = False
        self.error: BaseException | None = None
        self.closed = False
        self.pos = 0

    def _records_end(self, limit: int) -> int:
        """The end of the last whole record in ``held[:limit]`` (after a line break outside
        quotes; a doubled quote inside a quoted field keeps the count's parity), or 0."""
        q, i = self.quotes + self.held.count(b'"', 0, limit), limit
        while (j := self.held.rfind(b"\n", 0, i)) >= 0:
            q -= self.held.count(b'"', j + 1, i)
            if q % 2 == 0:
                return j + 1
            i = j
        return 0

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        want = n if n is not None and n > 0 else READ_CHUNK
        while not self.ended and len(self.held) < want:
            try:
                chunk = self.f.read(READ_CHUNK)
            except (pa.ArrowException, OSError, EOFError) as exc:
                self.error, self.ended = exc, True
                del self.held[self._records_end(len(self.held)) :]
                break
            self.ended = not chunk
            self.held += chunk
        cut = min(want, len(self.held))
        if not self.ended:  # whole records, unless one is longer than what was asked
            cut = self._records_end(cut) or cut
        out = bytes(self.held[:cut])
        del self.held[:cut]
        self.quotes = (self.quotes + out.count(b'"')) % 2
        self.pos += len(out)
        return out

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.closed = True


def _read_csv(f: Any, name: str, id_col: str, text_col: str) -> Iterator[pa.Table]:
    from pyarrow import csv

    f = _UpToBreak(f)

    # A record with too many or too few fields is skipped by the parser and becomes a flagged row
    # here, under its own number (the parser counts records from 1, the header included, as the
    # rows below are numbered).
    skipped: list[tuple[int | None, str, str]] = []

    def skip(row: Any) -> str:
        skipped.append(
            (
                row.number,
                row.text,
                f"{schema.ERR_BAD_ROW}: {row.actual_columns} field(s) where the header has {row.expected_columns}",
            )
        )
        return "skip"

    # Read every column as bytes, so a bad UTF-8 cell flags one row instead of failing the file.
    try:
        reader = csv.open_csv(
            f,
            read_options=csv.ReadOptions(use_threads=False, block_size=1 << 22),
            parse_options=csv.ParseOptions(invalid_row_handler=skip),
            convert_options=csv.ConvertOptions(
                column_types={id_col: pa.binary(), text_col: pa.binary()}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowException, OSError, EOFError) as exc:
        if f.error is None and isinstance(exc, pa.ArrowException):
            raise
        # A stream that breaks before its first whole record: the parser found it empty.
        yield _unreadable_rest(name, "1", f.error or exc)
        return
    taken: set[int] = set()  # numbers of skipped records: the good rows are numbered around them
    unnumbered = 0

    def skipped_rows() -> Iterator[pa.Table]:
        nonlocal unnumbered
        if not skipped:
            return
        bad = _Rows()
        for n, text, why in skipped:
            if n is None:  # a number the parser did not know: still a row of its own
                unnumbered += 1
                bad.add(None, text, f"{name}:?{unnumbered}", why)
            else:
                taken.add(n)
                bad.add(None, text, f"{name}:{n}", why)
        skipped.clear()
        yield bad.flush()

    number = 2

    def rest(exc: BaseException) -> Iterator[pa.Table]:
        nonlocal number
        yield from skipped_rows()
        while number in taken:
            number += 1
        yield _unreadable_rest(name, str(number), f.error or exc)  # the stream's break is the cause

    batches = iter(reader)
    while True:  # a block's records are parsed, and bad ones reported, before it is yielded
        try:
            batch = next(batches)
        except StopIteration:
            break
        except (pa.ArrowException, OSError, EOFError) as exc:
            yield from rest(exc)
            return
        bad = list(skipped_rows())
        numbers = []
        for _ in range(batch.num_rows):
            while number in taken:
                number += 1
            numbers.append(number)
            number += 1
        yield _from_columns(batch, name, id_col, text_col, numbers)
        yield from bad
    if f.error is not None:
        yield from rest(f.error)
        return
    yield from skipped_rows()  # bad records after the last good one


def _read_parquet(f: Any, name: str, id_col: str, text_col: str) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    present = [c for c in (id_col, text_col) if c in pf.schema_arrow.names]
    row0 = 0
    for group in range(pf.metadata.num_row_groups):
        n_group = pf.metadata.row_group(group).num_rows
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=ROWS_PER_BLOCK, row_groups=[group], columns=present):
                yield _from_columns(
                    batch, name, id_col, text_col, range(row0 + done + 1, row0 + done + 1 + batch.num_rows)
                )
                done += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            # A damaged row group: its rows that were not read are flagged, one each, in their place.
            why = f"{schema.ERR_BAD_ROW}: row group {group} cannot be read ({one_line(exc)})"
            rows = _Rows()
            for i in range(done, n_group):
                rows.add(None, None, f"{name}:{row0 + i + 1}", why)
                if len(rows) >= ROWS_PER_BLOCK:
                    yield rows.flush()
            if len(rows):
                yield rows.flush()
        row0 += n_group


def _from_columns(batch: pa.RecordBatch, name: str, id_col: str, text_col: str, numbers: Iterable[int]) -> pa.Table:
    """A block of rows, each numbered as a person counts them in the file (from 1; a CSV's header
    is row 1)."""
    n = batch.num_rows
    names = batch.schema.names

    def col(c: str) -> pa.Array:
        if c not in names:
            return pa.nulls(n, pa.binary())
        arr = batch.column(names.index(c))
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            return arr.cast(pa.binary())
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return arr.cast(pa.string()).cast(pa.binary())
        return pa.array([_as_bytes(v) for v in arr.to_pylist()], pa.binary())

    sources = [f"{name}:{i}" for i in numbers]
    err = None if text_col in names else f"missing_column: {text_col!r}"
    for c in (text_col, id_col):
        if c in names and nested_type(batch.schema.field(c).type):  # the pre-flight check refuses such a file
            err = f"{schema.ERR_NOT_TEXT}: column {c!r} holds {batch.schema.field(c).type}"
            return pa.table(
                {
                    RAW_ID: pa.nulls(n, pa.binary()),
                    RAW_TEXT: pa.nulls(n, pa.binary()),
                    SOURCE: pa.array(sources, pa.string()),
                    READ_ERROR: pa.array([err] * n, pa.string()),
                },
                schema=RAW_SCHEMA,
            )
    return pa.table(
        {
            RAW_ID: col(id_col),
            RAW_TEXT: col(text_col),
            SOURCE: pa.array(sources, pa.string()),
            READ_ERROR: pa.array([err] * n, pa.string()),
        },
        schema=RAW_SCHEMA,
    )


_READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}


def make_datasource(cfg: PoolConfig, filesystem: Any, paths: list[str], fmt: str):
    """A Ray Data datasource over the pool's files (imported lazily: Ray is heavy)."""
    from ray.data.datasource import FileBasedDatasource

    reader = _READERS[fmt]

    class PoolDatasource(FileBasedDatasource):
        _FILE_EXTENSIONS = EXTENSIONS[fmt]

        def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
            yield from reader(f, os.path.basename(path), cfg.id_column, cfg.text_column)

        def _open_input_source(self, filesystem, path, **open_args):
            if fmt == "parquet":  # Parquet needs random access
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

    return PoolDatasource(paths, filesystem=filesystem)


def read_pool(cfg: PoolConfig, filesystem: Any, paths: list[str], fmt: str, num_cpus: float = 0.25):
    """The pool's files (listed by :func:`~molal_ray.pipeline.pool_store.list_pool_files`) as a
    lazily read Ray Dataset of raw rows (``RAW_SCHEMA``)."""
    import ray.data

    return ray.data.read_datasource(make_datasource(cfg, filesystem, paths, fmt), num_cpus=num_cpus)


def iter_raw(cfg: PoolConfig, filesystem: Any, files: list[Any], fmt: str) -> Iterator[pa.Table]:
    """The raw rows (``RAW_SCHEMA``) of the pool's files (``pyarrow.fs.FileInfo``), block by
    block, in the calling process: the readers of :func:`read_pool`'s datasource."""
    reader = _READERS[fmt]
    for info in files:
        # Parquet needs random access; the stream of the other formats is decompressed by extension.
        with (
            filesystem.open_input_file(info.path) if fmt == "parquet" else filesystem.open_input_stream(info.path) as f
        ):
            yield from reader(f, info.base_name, cfg.id_column, cfg.text_column)


def texts_of_ids(cfg: PoolConfig, ids: list[str]) -> dict[str, str]:
    """The texts of some ids, read from the pool's files in the calling process (streamed,
    chunk by chunk; for a few hundred ids such as few-shot examples, not for the whole pool).
    An id repeated in the pool keeps its first text; ids not found are absent from the result."""
    from molal_ray.pipeline.pool_store import list_pool_files

    fs, files, fmt = list_pool_files(cfg)
    wanted = set(ids)
    found: dict[str, str] = {}
    for info in files:
        for table in iter_raw(cfg, fs, [info], fmt):
            for raw_id, raw_text in zip(table.column(RAW_ID).to_pylist(), table.column(RAW_TEXT).to_pylist()):
                if raw_id is None or raw_text is None:
                    continue
                sid = raw_id.decode("utf-8", "replace")
                if sid in wanted and sid not in found:
                    found[sid] = raw_text.decode("utf-8", "replace")
        if len(found) == len(wanted):
            break
    return found
