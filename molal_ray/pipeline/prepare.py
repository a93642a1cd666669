"""Decode and check raw pool rows: every row leaves with a sample id, flagged if it is bad.

Pure functions on Arrow tables (run inside Ray Data ``map_batches``, testable without Ray).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from molal_ray import schema
from molal_ray.ids import hash_ids
from molal_ray.pipeline.pool import RAW_ID, RAW_TEXT, READ_ERROR, SOURCE

ID_HASH = "_id_hash"
ROW = "_row"
PREPARED_SCHEMA = pa.schema(
    [
        (schema.SAMPLE_ID, pa.string()),
        (schema.TEXT, pa.string()),
        (schema.POOL_ERROR, pa.string()),
        (schema.POOL_WARNING, pa.string()),
        (SOURCE, pa.string()),
        (ID_HASH, pa.uint64()),
    ]
)


def _decode(raw: bytes | None) -> tuple[str | None, bool]:
    if raw is None:
        return None, True
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), False


def prepare_batch(raw: pa.Table, max_text_chars: int) -> pa.Table:
    """Raw rows -> ``PREPARED_SCHEMA``: ids and texts decoded, bad rows flagged, never dropped."""
    ids_raw = raw.column(RAW_ID).to_pylist()
    texts_raw = raw.column(RAW_TEXT).to_pylist()
    sources = raw.column(SOURCE).to_pylist()
    read_errors = raw.column(READ_ERROR).to_pylist()
    out_ids, out_texts, errors, warnings = [], [], [], []
    for rid, rtext, src, rerr in zip(ids_raw, texts_raw, sources, read_errors):
        error = rerr
        warning = None
        sid, id_ok = _decode(rid)
        if sid is not None:
            sid = sid.strip()
        if not sid:
            sid = f"{schema.ERR_MISSING_ID}:{src}"
            error = error or f"{schema.ERR_MISSING_ID}: the row at {src} has no id"
        elif not id_ok:
            error = error or f"{schema.ERR_INVALID_UTF8}: the id at {src} is not UTF-8"
        text, text_ok = _decode(rtext)
        if error is None:
            if not text_ok:
                error = f"{schema.ERR_INVALID_UTF8}: the text at {src} is not UTF-8"
            elif text is None or not text.strip():
                error = f"{schema.ERR_EMPTY_TEXT}: the text at {src} is empty"
            elif len(text) > max_text_chars:
                warning = f"{schema.WARN_TRUNCATED}: {len(text)} characters cut to {max_text_chars}"
                text = text[:max_text_chars]
        out_ids.append(sid)
        out_texts.append(text if error is None else None)
        errors.append(error)
        warnings.append(warning)
    return pa.table(
        {
            schema.SAMPLE_ID: pa.array(out_ids, pa.string()),
            schema.TEXT: pa.array(out_texts, pa.string()),
            schema.POOL_ERROR: pa.array(errors, pa.string()),
            schema.POOL_WARNING: pa.array(warnings, pa.string()),
            SOURCE: pa.array(sources, pa.string()),
            ID_HASH: pa.array(hash_ids(out_ids), pa.uint64()),
        },
        schema=PREPARED_SCHEMA,
    )


def _source_key(source: str) -> tuple[str, int]:
    """Sort key of a ``file:row`` source: the file, then the row as a number (row 10 after 9)."""
    name, _, row = source.rpartition(":")
    return (name, int(row)) if row.isdigit() else (source, 0)


def resolve_duplicates(rows: pa.Table) -> pa.Table:
    """Give every row a unique id: the one rule for repeated ids, shared by the label job and the
    loop. Among rows sharing an id, the first *usable* copy in file order (by ``file:row``, rows
    compared as numbers) keeps the id; when every copy is flagged, the first copy keeps it. Each
    other copy gets the id ``ID#dupK`` (K = 1, 2, ... in file order), no text and the error
    ``duplicate_id``, so every row stays, under a key of its own. The result does not depend on
    the order the rows arrive in."""
    if rows.num_rows == 0:
        return rows
    ids = rows.column(schema.SAMPLE_ID)
    counts = pc.value_counts(ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return rows
    mask = pc.is_in(ids, value_set=repeated)
    keep = rows.filter(pc.invert(mask))
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows.filter(mask).to_pylist():
        groups[r[schema.SAMPLE_ID]].append(r)
    out = []
    for sid, group in groups.items():
        group.sort(key=lambda r: _source_key(r[SOURCE]))
        usable = [r for r in group if r[schema.POOL_ERROR] is None]
        winner = usable[0] if usable else group[0]
        out.append(winner)
        for k, r in enumerate((r for r in group if r is not winner), 1):
            r = dict(r)
            r[schema.SAMPLE_ID] = f"{sid}#dup{k}"
            r[schema.TEXT] = None
            r[schema.POOL_ERROR] = (
                f"{schema.ERR_DUPLICATE_ID}: id {sid!r} at {r[SOURCE]} is also at {winner[SOURCE]}, which keeps it"
            )
            r[ID_HASH] = int(hash_ids([r[schema.SAMPLE_ID]])[0])
            out.append(r)
    return pa.concat_tables([keep, pa.Table.from_pylist(out, schema=rows.schema)])


def bucket_of(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket (0..buckets-1) of each id hash: its top 32 bits scaled to the bucket count, so
    every copy of an id lands in the same bucket and buckets are even."""
    h = np.asarray(hashes, dtype=np.uint64) >> np.uint64(32)
    return ((h * np.uint64(buckets)) >> np.uint64(32)).astype(np.int32)


ROW_BITS = 40
"""A usable row's key is ``bucket << ROW_BITS | position in the bucket``."""
_POSITION_MASK = np.int64((1 << ROW_BITS) - 1)


def row_keys(buckets: np.ndarray | int, positions: np.ndarray | int) -> np.ndarray:
    """Row keys of (bucket, position in the bucket) pairs."""
    return (np.asarray(buckets, np.int64) << np.int64(ROW_BITS)) + np.asarray(positions, np.int64)


def split_row_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bucket, position in the bucket) of each row key."""
    keys = np.asarray(keys, dtype=np.int64)
    return keys >> np.int64(ROW_BITS), keys & _POSITION_MASK


def split_bucket(rows: pa.Table, bucket: int) -> tuple[pa.Table, pa.Table]:
    """All prepared rows of one bucket -> (usable rows sorted by id, each with its row key;
    flagged rows sorted by id). Deterministic: the same pool gives the same files."""
    rows = resolve_duplicates(rows)
    ok = pc.is_null(rows.column(schema.POOL_ERROR))
    usable = rows.filter(ok).sort_by([(schema.SAMPLE_ID, "ascending")])
    keys = row_keys(bucket, np.arange(usable.num_rows, dtype=np.int64))
    usable = usable.append_column(ROW, pa.array(keys, pa.int64()))
    flagged = rows.filter(pc.invert(ok)).sort_by([(schema.SAMPLE_ID, "ascending")])
    return usable, flagged
