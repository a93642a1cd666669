"""Recorded annotations: the trec-5llm JSONL format and the project's own Parquet format.

The project's recording format is long, one row per (sample, annotator):
``sample_id, annotator, label_probs (list<float>), samples (list<string>)``, where
``label_probs`` are raw label probabilities in label-set order and ``samples`` are raw answers.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from molal_ray.exceptions import SchemaError

RECORDING_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("annotator", pa.string()),
    ("label_probs", pa.list_(pa.float64())),
    ("samples", pa.list_(pa.string())),
])


def iter_trec_jsonl(path: str | Path) -> Iterator[dict]:
    """Rows of a trec-5llm style JSONL(.gz) file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
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


def load_recording(path: str | Path, annotator: str) -> dict[str, tuple[list[float] | None, list[str] | None]]:
    """``sample_id -> (label_probs, samples)`` of one annotator, from either format."""
    p = str(path)
    if p.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        out = {}
        for row in iter_trec_jsonl(p):
            ann = row.get("annotators", {}).get(annotator)
            if ann is not None:
                out[row["id"]] = (ann.get("label_probs"), ann.get("samples"))
        return out
    table = pq.read_table(p, filters=[("annotator", "=", annotator)])
    missing = set(RECORDING_SCHEMA.names) - set(table.column_names)
    if missing:
        raise SchemaError(f"recording {p}: missing columns {sorted(missing)}; "
                          f"expected {RECORDING_SCHEMA.names}")
    ids = table.column("sample_id").to_pylist()
    probs = table.column("label_probs").to_pylist()
    samples = table.column("samples").to_pylist()
    return {i: (lp, s) for i, lp, s in zip(ids, probs, samples)}
