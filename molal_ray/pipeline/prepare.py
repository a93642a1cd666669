"""Decode and check raw pool rows: every row leaves with a sample id, flagged if it is bad.

Pure functions on Arrow tables (run inside Ray Data ``map_batches``, testable without Ray).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from molal_ray import schema
from molal_ray.pipeline.pool import RAW_ID, RAW_TEXT, READ_ERROR, SOURCE

ID_HASH = "_id_hash"
PREPARED_SCHEMA = pa.schema([
    (schema.SAMPLE_ID, pa.string()), (schema.TEXT, pa.string()), (schema.POOL_ERROR, pa.string()),
    (schema.POOL_WARNING, pa.string()), (SOURCE, pa.string()), (ID_HASH, pa.uint64()),
])


def hash_ids(ids: Iterable[str]) -> np.ndarray:
    """Stable 64-bit hashes of sample ids (same value in every process and run)."""
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(arr, categorize=False)


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
    return pa.table({
        schema.SAMPLE_ID: pa.array(out_ids, pa.string()),
        schema.TEXT: pa.array(out_texts, pa.string()),
        schema.POOL_ERROR: pa.array(errors, pa.string()),
        schema.POOL_WARNING: pa.array(warnings, pa.string()),
        SOURCE: pa.array(sources, pa.string()),
        ID_HASH: pa.array(hash_ids(out_ids), pa.uint64()),
    }, schema=PREPARED_SCHEMA)


def find_duplicate_hashes(hashes: np.ndarray) -> np.ndarray:
    """Sorted hashes that occur more than once."""
    if hashes.size == 0:
        return hashes.astype(np.uint64)
    values, counts = np.unique(hashes, return_counts=True)
    return values[counts > 1]


def _source_key(source: str) -> tuple[str, int]:
    name, _, row = source.rpartition(":")
    return (name, int(row)) if row.isdigit() else (source, 0)


def resolve_duplicates(rows: pa.Table) -> pa.Table:
    """Rows sharing an id: the first in file order keeps it; each later one gets the id
    ``ID#dupK`` and the error ``duplicate_id`` (so every row stays, with a unique key)."""
    if rows.num_rows == 0:
        return rows
    data = rows.to_pylist()
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in data:
        groups[r[schema.SAMPLE_ID]].append(r)
    out = []
    for sid, group in groups.items():
        group.sort(key=lambda r: _source_key(r[SOURCE]))
        first = group[0]
        out.append(first)
        for k, r in enumerate(group[1:], 1):
            r = dict(r)
            r[schema.SAMPLE_ID] = f"{sid}#dup{k}"
            r[schema.TEXT] = None
            r[schema.POOL_ERROR] = (f"{schema.ERR_DUPLICATE_ID}: id {sid!r} at {r[SOURCE]} was first "
                                    f"seen at {first[SOURCE]}")
            r[ID_HASH] = int(hash_ids([r[schema.SAMPLE_ID]])[0])
            out.append(r)
    return pa.Table.from_pylist(out, schema=PREPARED_SCHEMA)
