"""The prepared pool: the pool read once, its rows checked, bucketed by id and written as Parquet.

The label job, the loop and predict start here. Ray Data reads the pool's files once, decodes and
checks every row (:func:`~molal_ray.pipeline.prepare.prepare_batch`), and groups the rows by a
bucket of their id hash (``groupby(_bucket).map_groups``): every copy of an id lands in the same
bucket, so repeated ids are resolved there by the one rule of
:func:`~molal_ray.pipeline.prepare.resolve_duplicates`, without a second pass over the pool. A
small pool (``LOCAL_PREPARE_BYTES``) goes through the same functions in the calling process.
Each bucket is written as two files::

    POOL/bucket-00003.parquet    usable rows, sorted by id, each with a row key (_row)
    POOL/flagged-00003.parquet   flagged rows (empty text, bad bytes, repeated id, ...)
    POOL/_manifest.json          written last: the source files' fingerprint and the counts

A usable row's key is ``bucket << 40 | position``; the usable rows are also numbered densely
0..U-1 in bucket order, so a random sample of the pool is a draw of U-bounded integers, without
any list of ids. The same pool files give the same buckets, keys and numbers, so a resumed run
sees what the first one saw; a manifest whose fingerprint matches the pool is reused as it is.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from molal_ray import schema
from molal_ray.config import PoolConfig
from molal_ray.exceptions import ConfigError, SchemaError
from molal_ray.pipeline.pool import EXTENSIONS, detect_format, format_of
from molal_ray.pipeline.prepare import (
    ID_HASH,
    PREPARED_SCHEMA,
    ROW,
    bucket_of,
    prepare_batch,
    row_keys,
    split_bucket,
    split_row_keys,
)
from molal_ray.storage import Location, is_uri, resolve

logger = logging.getLogger("molal_ray.pipeline")

BUCKET = "_bucket"
MANIFEST = "_manifest.json"
FORMAT_VERSION = 2
BUCKET_INPUT_BYTES = 32 << 20
"""One bucket per this many bytes of pool files (when ``pool.buckets`` is not set)."""
MAX_BUCKETS = 4096
ROW_GROUP_ROWS = 4096
"""Rows per Parquet row group: a fetch of a few rows by key reads only their row groups."""
GROUPS_PER_KEYED_READ = 16
LOCAL_PREPARE_BYTES = 8 << 20
"""Pools whose files hold at most this many bytes are prepared in the calling process; larger
ones by Ray Data (20,000 short texts: 0.05 s here against 3.7-5.6 s through Ray Data's tasks,
``benchmarks/results/predict_speed.md``)."""

USABLE_SCHEMA = pa.schema([*PREPARED_SCHEMA, (BUCKET, pa.int32()), (ROW, pa.int64())])
FLAGGED_SCHEMA = pa.schema([*PREPARED_SCHEMA, (BUCKET, pa.int32())])


def bucket_file(kind: str, bucket: int) -> str:
    return f"{kind}-{bucket:05d}.parquet"


# -- the pool's source files ------------------------------------------------------------------
def list_pool_files(cfg: PoolConfig) -> tuple[pafs.FileSystem, list[pafs.FileInfo], str]:
    """The pool's files (a file, a folder searched recursively, or a glob), their filesystem and
    format. Hidden files and folders (``.`` or ``_`` first) are skipped, as Ray Data does."""
    path = cfg.path
    # A URI's options (?endpoint_override=...) are not wildcards: look for those in its path only.
    target, q, query = path.partition("?") if is_uri(path) else (path, "", "")
    wild = [i for i, ch in enumerate(target) if ch in "*?["]
    base = target if not wild else (target[: wild[0]].rsplit("/", 1)[0] or "/")
    loc = resolve(base + q + query, field="pool.path")
    info = loc.info()
    if info.type == pafs.FileType.File and not wild:
        files = [info]
    else:
        sel = pafs.FileSelector(loc.path, allow_not_found=True, recursive=True)
        files = [
            i
            for i in loc.fs.get_file_info(sel)
            if i.type == pafs.FileType.File
            and not any(part.startswith((".", "_")) for part in i.path[len(loc.path) :].split("/") if part)
        ]
        if wild:
            pattern = (
                loc.path.rstrip("/") + "/" + target[len(base.rstrip("/")) + 1 :]
                if is_uri(path)
                else os.path.abspath(path)
            )
            files = [i for i in files if fnmatch.fnmatch(i.path, pattern)]
    if not files:
        raise ConfigError(f"pool.path: got {path!r}; expected an existing file, a folder or a glob of pool files")
    fmt: str = cfg.format
    if fmt == "auto":
        named = [f.base_name for f in files]
        found = [f for f in map(format_of, named) if f is not None]
        if len(set(found)) > 1:
            listed = sorted(f"{f.base_name} ({format_of(f.base_name) or 'no pool format'})" for f in files)
            raise ConfigError(
                f"pool.path: {path!r} holds files of {len(set(found))} formats: {', '.join(listed[:10])}"
                + (f" and {len(listed) - 10} more" if len(listed) > 10 else "")
                + "; keep one format there, or set pool.format to read the files of one (the others are skipped)"
            )
        fmt = found[0] if found else detect_format(path)
    exts = tuple("." + e for e in EXTENSIONS[fmt])
    kept = [f for f in files if f.base_name.lower().endswith(exts)] if len(files) > 1 or wild else files
    if not kept:
        raise ConfigError(f"pool.path: got {path!r}; expected {fmt} files ({', '.join(exts)}) there")
    return loc.fs, sorted(kept, key=lambda i: i.path), fmt


def skipped_pool_files(cfg: PoolConfig) -> list[str]:
    """The files of a pool folder that the pool leaves out (not of its format), relative to the
    folder; [] for a file or a glob (a glob names what it wants). Hidden files (``.`` or ``_``
    first) are not counted."""
    target = cfg.path.partition("?")[0] if is_uri(cfg.path) else cfg.path
    loc = resolve(cfg.path, field="pool.path")
    if any(ch in "*?[" for ch in target) or loc.info().type != pafs.FileType.Directory:
        return []
    _, kept, _ = list_pool_files(cfg)
    have = {k.path for k in kept}
    sel = pafs.FileSelector(loc.path, allow_not_found=True, recursive=True)
    return sorted(
        rel
        for i in loc.fs.get_file_info(sel)
        if i.type == pafs.FileType.File and i.path not in have
        for rel in [i.path[len(loc.path) :].lstrip("/")]
        if not any(part.startswith((".", "_")) for part in rel.split("/"))
    )


def fingerprint(cfg: PoolConfig, files: Sequence[pafs.FileInfo], buckets: int) -> dict[str, Any]:
    """What the prepared pool was made from: if any of it changes, the pool is prepared again."""
    return {
        "files": [[f.path, f.size, f.mtime_ns] for f in files],
        "format": cfg.format,
        "id_column": cfg.id_column,
        "text_column": cfg.text_column,
        "max_text_chars": cfg.max_text_chars,
        "buckets": buckets,
        "format_version": FORMAT_VERSION,
    }


def choose_buckets(cfg: PoolConfig, files: Sequence[pafs.FileInfo]) -> int:
    if cfg.buckets is not None:
        return cfg.buckets
    total = sum(max(f.size or 0, 0) for f in files)
    return int(min(MAX_BUCKETS, max(1, math.ceil(total / BUCKET_INPUT_BYTES))))


# -- Ray Data stages (pure functions on Arrow tables) ------------------------------------------
def prepare_with_bucket(raw: pa.Table, max_text_chars: int, buckets: int) -> pa.Table:
    """``map_batches``: raw rows -> prepared rows with their bucket."""
    t = prepare_batch(raw, max_text_chars)
    return t.append_column(BUCKET, pa.array(bucket_of(t.column(ID_HASH).to_numpy(), buckets), pa.int32()))


COUNTS_SCHEMA = pa.schema(
    [(BUCKET, pa.int32()), ("usable", pa.int64()), ("flagged", pa.int64()), ("kinds", pa.string())]
)


def write_bucket(rows: pa.Table, folder: Location) -> pa.Table:
    """``map_groups``: all rows of one bucket -> its two files; returns one row of counts. A
    retried task writes the same files again (their content depends only on the pool)."""
    k = int(rows.column(BUCKET)[0].as_py())
    usable, flagged = split_bucket(rows.select(PREPARED_SCHEMA.names), k)
    usable = usable.append_column(BUCKET, pa.array(np.full(usable.num_rows, k, np.int32)))
    usable = usable.select(USABLE_SCHEMA.names).cast(USABLE_SCHEMA)
    flagged = flagged.append_column(BUCKET, pa.array(np.full(flagged.num_rows, k, np.int32))).cast(FLAGGED_SCHEMA)
    folder.join(bucket_file("bucket", k)).write_parquet(usable, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    folder.join(bucket_file("flagged", k)).write_parquet(flagged, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    kinds: dict[str, int] = {}
    for e in flagged.column(schema.POOL_ERROR).to_pylist():
        kind = schema.error_kind(e) or "unknown"
        kinds[kind] = kinds.get(kind, 0) + 1
    return pa.table(
        {BUCKET: [k], "usable": [usable.num_rows], "flagged": [flagged.num_rows], "kinds": [json.dumps(kinds)]},
        schema=COUNTS_SCHEMA,
    )


def read_row_groups(items: pa.Table, folder: Location, columns: list[str]) -> pa.Table:
    """``map_batches``: read units (:meth:`PreparedPool.read_items`) -> their rows."""
    out = []
    for item in items.to_pylist():
        with folder.fs.open_input_file(folder.join(item["file"]).path) as f:
            t = pq.ParquetFile(f).read_row_groups(item["row_groups"], columns=columns)
        if item["positions"] is not None:
            t = t.take(pa.array(item["positions"], pa.int64()))
        out.append(t)
    return pa.concat_tables(out)


def prepare_here(
    cfg: PoolConfig, fs: pafs.FileSystem, files: Sequence[pafs.FileInfo], fmt: str, folder: Location, buckets: int
) -> Iterator[pa.Table]:
    """A small pool prepared in the calling process: the stages' own functions, in order, without
    Ray Data's tasks (whose start costs more than the work below ``LOCAL_PREPARE_BYTES``). The
    same files as :func:`prepare_with_ray_data` (a bucket's files do not depend on row order).
    Yields each written bucket's counts."""
    from molal_ray.pipeline.pool import RAW_SCHEMA, iter_raw

    raw = pa.concat_tables([RAW_SCHEMA.empty_table(), *iter_raw(cfg, fs, list(files), fmt)])
    prepared = prepare_with_bucket(raw, cfg.max_text_chars, buckets)
    of_row = prepared.column(BUCKET).to_numpy()
    order = np.argsort(of_row, kind="stable")  # one pass, whatever the bucket count
    _, starts = np.unique(of_row[order], return_index=True)
    for start, end in zip(starts, [*starts[1:], len(order)]):
        yield write_bucket(prepared.take(pa.array(order[start:end])), folder)


def prepare_with_ray_data(
    cfg: PoolConfig,
    fs: pafs.FileSystem,
    files: Sequence[pafs.FileInfo],
    fmt: str,
    folder: Location,
    buckets: int,
    num_cpus: float,
) -> Iterator[pa.Table]:
    """A pool of any size prepared by Ray Data: files read by tasks, rows grouped by bucket
    (``groupby(_bucket).map_groups``), each bucket written by one task; nothing pool-sized in
    the calling process. Yields the written buckets' counts."""
    from molal_ray.pipeline.pool import read_pool

    prepared = read_pool(cfg, fs, [f.path for f in files], fmt, num_cpus=num_cpus).map_batches(
        prepare_with_bucket,
        fn_kwargs={"max_text_chars": cfg.max_text_chars, "buckets": buckets},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=num_cpus,
    )
    counts = prepared.groupby(BUCKET, num_partitions=min(buckets, 64)).map_groups(
        write_bucket, fn_kwargs={"folder": folder}, batch_format="pyarrow", num_cpus=num_cpus
    )
    yield from counts.iter_batches(batch_format="pyarrow", batch_size=None)


# -- the prepared pool ------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolManifest:
    fingerprint: dict[str, Any]
    buckets: int
    usable: list[int]
    flagged: list[int]
    flagged_by_kind: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.usable) + sum(self.flagged)

    def key(self) -> str:
        """A short digest of the fingerprint (a loop records which pool it ran on)."""
        return hashlib.blake2b(json.dumps(self.fingerprint, sort_keys=True).encode(), digest_size=8).hexdigest()


class PreparedPool:
    """A prepared pool folder: its geometry, fetches of rows by key, and Ray Datasets over it."""

    def __init__(self, folder: Location, manifest: PoolManifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.offsets = np.concatenate([[0], np.cumsum(manifest.usable)]).astype(np.int64)

    # construction -------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Location) -> PreparedPool | None:
        """The pool prepared in ``folder``, or None when it holds no finished one."""
        loc = resolve(folder)
        m = loc.join(MANIFEST)
        if not m.exists():
            return None
        d = m.read_json()
        if d.get("fingerprint", {}).get("format_version") != FORMAT_VERSION:
            return None
        return cls(
            loc,
            PoolManifest(
                d["fingerprint"], int(d["buckets"]), list(d["usable"]), list(d["flagged"]), dict(d["flagged_by_kind"])
            ),
        )

    @classmethod
    def build(
        cls, cfg: PoolConfig, folder: str | Location, *, num_cpus: float = 0.25, buckets: int | None = None
    ) -> PreparedPool:
        """Prepare ``cfg``'s pool into ``folder`` (reused when a finished one matches it);
        ``buckets`` pins the bucket count (an annotation table is written per bucket, so a table
        keeps the count it was started with)."""
        loc = resolve(folder)
        fs, files, fmt = list_pool_files(cfg)
        if buckets is not None and cfg.buckets is not None and cfg.buckets != buckets:
            raise ConfigError(
                f"pool.buckets: got {cfg.buckets}; expected {buckets} or unset: the output holds a "
                f"table written with {buckets} buckets (or use another output folder)"
            )
        buckets = buckets or choose_buckets(cfg, files)
        fp = fingerprint(cfg, files, buckets)
        old = cls.open(loc)
        if old is not None and old.manifest.fingerprint == fp:
            logger.info("prepared pool in %s matches the pool files; reused", loc)
            return old
        loc.delete_dir()
        loc.mkdirs()
        if sum(max(f.size or 0, 0) for f in files) <= LOCAL_PREPARE_BYTES:
            counts = prepare_here(cfg, fs, files, fmt, loc, buckets)
        else:
            counts = prepare_with_ray_data(cfg, fs, files, fmt, loc, buckets, num_cpus)
        usable, flagged, kinds = [0] * buckets, [0] * buckets, {}  # type: ignore[var-annotated]
        for batch in counts:
            for k, u, f, kj in zip(*(batch.column(c).to_pylist() for c in COUNTS_SCHEMA.names)):
                usable[k], flagged[k] = u, f
                for kind, n in json.loads(kj).items():
                    kinds[kind] = kinds.get(kind, 0) + n
        manifest = PoolManifest(fp, buckets, usable, flagged, kinds)
        loc.join(MANIFEST).write_json(
            {"fingerprint": fp, "buckets": buckets, "usable": usable, "flagged": flagged, "flagged_by_kind": kinds}
        )
        return cls(loc, manifest)

    # geometry ---------------------------------------------------------------------------------
    @property
    def n_usable(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_flagged(self) -> int:
        return sum(self.manifest.flagged)

    @property
    def n_rows(self) -> int:
        return self.manifest.rows

    def keys_of(self, dense: np.ndarray) -> np.ndarray:
        """Row keys of dense row numbers (0..U-1)."""
        dense = np.asarray(dense, dtype=np.int64)
        if dense.size and (dense.min() < 0 or dense.max() >= self.n_usable):
            raise SchemaError(f"prepared pool: row numbers outside 0..{self.n_usable - 1}")
        b = np.searchsorted(self.offsets, dense, side="right") - 1
        return row_keys(b, dense - self.offsets[b])

    def dense_of(self, keys: np.ndarray) -> np.ndarray:
        """Dense row numbers of row keys."""
        b, pos = split_row_keys(keys)
        return self.offsets[b] + pos

    def files(self, kind: str = "bucket") -> list[Location]:
        """The bucket files of one kind that hold rows (``bucket`` usable, ``flagged``)."""
        counts = self.manifest.usable if kind == "bucket" else self.manifest.flagged
        return [self.folder.join(bucket_file(kind, k)) for k, n in enumerate(counts) if n]

    # reads ------------------------------------------------------------------------------------
    def fetch(
        self, keys: Sequence[int] | np.ndarray, columns: Sequence[str] = (schema.SAMPLE_ID, schema.TEXT)
    ) -> pa.Table:
        """The usable rows with these keys, in the order asked, with ``_row`` and ``columns``
        (in this process; reads only the row groups that hold them)."""
        keys = np.asarray(keys, dtype=np.int64)
        cols = list(dict.fromkeys([ROW, *columns]))
        if keys.size == 0:
            return USABLE_SCHEMA.empty_table().select(cols)
        bucket, pos = split_row_keys(keys)
        bad = (bucket >= self.manifest.buckets) | (
            pos >= np.asarray(self.manifest.usable + [0])[np.minimum(bucket, self.manifest.buckets)]
        )
        if bad.any():
            raise SchemaError(
                f"prepared pool: {int(bad.sum())} row keys are not usable rows (first: {int(keys[bad][0])})"
            )
        parts = []
        for b in np.unique(bucket):
            p = np.unique(pos[bucket == b])
            with self.folder.fs.open_input_file(self.folder.join(bucket_file("bucket", int(b))).path) as f:
                pf = pq.ParquetFile(f)
                starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
                groups = np.unique(np.searchsorted(starts, p, side="right") - 1)
                t = pf.read_row_groups(groups.tolist(), columns=cols)
            parts.append(t.take(pa.array(np.searchsorted(t.column(ROW).to_numpy(), row_keys(int(b), p)))))
        table = pa.concat_tables(parts)  # keys ascending: buckets in order, positions in order
        return table.take(pa.array(np.searchsorted(table.column(ROW).to_numpy(), keys)))

    def read_items(
        self, kinds: Sequence[str] = ("bucket",), keys: np.ndarray | None = None, groups_per_read: int = 1
    ) -> list[dict[str, Any]]:
        """Units of work of a read: ``groups_per_read`` row groups of one file each; when ``keys``
        (usable rows only) are given, up to ``GROUPS_PER_KEYED_READ`` row groups holding them, and
        the positions of the wanted rows in what those row groups read."""
        items: list[dict[str, Any]] = []
        if keys is not None:  # a few rows of many row groups: several row groups per read task
            keys = np.unique(np.asarray(keys, dtype=np.int64))
            bucket, pos = split_row_keys(keys)
            for b in np.unique(bucket):
                p = pos[bucket == b]
                groups = np.unique(p // ROW_GROUP_ROWS)
                for chunk in range(0, len(groups), GROUPS_PER_KEYED_READ):
                    gs = groups[chunk : chunk + GROUPS_PER_KEYED_READ]
                    sel = p[np.isin(p // ROW_GROUP_ROWS, gs)]
                    # Row groups hold ROW_GROUP_ROWS rows (a file's last one fewer, and it comes last).
                    at = np.searchsorted(gs, sel // ROW_GROUP_ROWS) * ROW_GROUP_ROWS + sel % ROW_GROUP_ROWS
                    items.append(
                        {"file": bucket_file("bucket", int(b)), "row_groups": gs.tolist(), "positions": at.tolist()}
                    )
            return items
        for kind in kinds:
            counts = self.manifest.usable if kind == "bucket" else self.manifest.flagged
            for k, n in enumerate(counts):
                n_groups = math.ceil(n / ROW_GROUP_ROWS)
                for first in range(0, n_groups, groups_per_read):
                    read = list(range(first, min(first + groups_per_read, n_groups)))
                    items.append({"file": bucket_file(kind, k), "row_groups": read, "positions": None})
        return items

    def dataset(
        self,
        kinds: Sequence[str] = ("bucket",),
        columns: Sequence[str] = (ROW, schema.SAMPLE_ID, schema.TEXT),
        keys: np.ndarray | None = None,
        num_cpus: float = 0.25,
        groups_per_read: int = 1,
        num_gpus: float = 0.0,
    ):
        """A Ray Dataset of the prepared rows (of ``kinds``, or the usable rows with ``keys``),
        read by Ray tasks ``groups_per_read`` row groups at a time (a block each): ``columns``
        only, the wanted rows only. Ray Data fuses the reads into the next stage's actors when
        it asks the same ``num_cpus`` and ``num_gpus`` (each actor then reads its own blocks)."""
        import ray.data

        items = self.read_items(kinds, keys, groups_per_read)
        if not items:
            return ray.data.from_arrow(USABLE_SCHEMA.empty_table().select(list(columns)))
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            read_row_groups,  # type: ignore[arg-type]  # Ray's stubs: no fn_kwargs
            fn_kwargs={"folder": self.folder, "columns": list(columns)},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )

    def iter_flagged(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The flagged rows, file by file (memory stays flat)."""
        for f in self.files("flagged"):
            with f.fs.open_input_file(f.path) as fh:
                yield from pq.ParquetFile(fh).iter_batches(columns=list(columns) if columns else None)

    def find(self, ids: Sequence[str]) -> pa.Table:
        """``_row, sample_id`` of the usable rows among ``ids`` (each id is looked for in its
        own bucket only)."""
        from molal_ray.ids import hash_ids

        ids = list(dict.fromkeys(ids))
        if not ids:
            return pa.table({ROW: pa.array([], pa.int64()), schema.SAMPLE_ID: pa.array([], pa.string())})
        b = bucket_of(hash_ids(ids), self.manifest.buckets)
        arr = np.asarray(ids, dtype=object)
        out = []
        for k in np.unique(b):
            if not self.manifest.usable[k]:
                continue
            f = self.folder.join(bucket_file("bucket", int(k)))
            want = pa.array(arr[b == k].tolist(), pa.string())
            t = pq.read_table(
                f.path,
                filesystem=f.fs,
                columns=[ROW, schema.SAMPLE_ID],
                filters=pc.is_in(pc.field(schema.SAMPLE_ID), value_set=want),
            )
            out.append(t)
        if not out:
            return pa.table({ROW: pa.array([], pa.int64()), schema.SAMPLE_ID: pa.array([], pa.string())})
        return pa.concat_tables(out)
