"""Recorded annotations: the trec-5llm JSONL format and the project's own Parquet format.

The project's recording format is long, one row per (sample, annotator):
``sample_id, annotator, label_probs (list<float>), samples (list<string>)``, where
``label_probs`` are raw label probabilities in label-set order and ``samples`` are raw answers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from molal_ray.exceptions import SchemaError
from molal_ray.storage import resolve

RECORDING_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("annotator", pa.string()),
        ("label_probs", pa.list_(pa.float64())),
        ("samples", pa.list_(pa.string())),
    ]
)


def iter_trec_jsonl(path: str | Path) -> Iterator[dict]:
    """Rows of a trec-5llm style JSONL(.gz) file (a local path or a URI)."""
    loc = resolve(str(path))
    with loc.fs.open_input_stream(loc.path) as raw:  # .gz is decompressed by pyarrow (detected by name)
        f = io.TextIOWrapper(raw, encoding="utf-8")
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def trec_jsonl_to_recording(path: str | Path) -> pa.Table:
    """Convert the trec-5llm JSONL into the long recording table."""
    cols: dict[str, list] = {n: [] for n in RECORDING_SCHEMA.names}
    for row in iter_trec_jsonl(path):
        for name, ann in row.get("annotators", {}).items():
            cols["sample_id"].append(row["id"])
            cols["annotator"].append(name)
            cols["label_probs"].append(ann.get("label_probs"))
            cols["samples"].append(ann.get("samples"))
    return pa.table(cols, schema=RECORDING_SCHEMA)


def iter_recording(path: str | Path, annotator: str, batch_size: int = 65536) -> Iterator[pa.RecordBatch | pa.Table]:
    """One annotator's rows of a recording (either format), batch by batch."""
    p = str(path)
    if p.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        yield load_recording_table(p, annotator)
        return
    loc = resolve(p)
    if not loc.exists():
        raise FileNotFoundError(p)
    ds = pads.dataset(loc.path, format="parquet", filesystem=loc.fs)
    missing = set(RECORDING_SCHEMA.names) - set(ds.schema.names)
    if missing:
        raise SchemaError(f"recording {p}: missing columns {sorted(missing)}; expected {RECORDING_SCHEMA.names}")
    yield from ds.to_batches(
        columns=RECORDING_SCHEMA.names,
        filter=pc.field("annotator") == annotator,
        batch_size=batch_size,
        batch_readahead=1,
        fragment_readahead=1,
    )


def load_recording_table(path: str | Path, annotator: str) -> pa.Table:
    """One annotator's rows of a recording (either format) as a ``RECORDING_SCHEMA`` table."""
    p = str(path)
    if p.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        table = trec_jsonl_to_recording(p)
        return table.filter(pc.equal(table.column("annotator"), annotator))
    loc = resolve(p)
    table = pq.read_table(loc.path, filesystem=loc.fs, filters=[("annotator", "=", annotator)])
    missing = set(RECORDING_SCHEMA.names) - set(table.column_names)
    if missing:
        raise SchemaError(f"recording {p}: missing columns {sorted(missing)}; expected {RECORDING_SCHEMA.names}")
    return table.select(RECORDING_SCHEMA.names)


def load_recording(path: str | Path, annotator: str) -> dict[str, tuple[list[float] | None, list[str] | None]]:
    """``sample_id -> (label_probs, samples)`` of one annotator, from either format."""
    table = load_recording_table(path, annotator)
    ids = table.column("sample_id").to_pylist()
    probs = table.column("label_probs").to_pylist()
    samples = table.column("samples").to_pylist()
    return {i: (lp, s) for i, lp, s in zip(ids, probs, samples)}
