"""Recorded annotations: the trec-5llm JSONL format and the project's own Parquet format.

The project's recording format is long, one row per (sample, annotator):
``sample_id, annotator, label_probs (list<float>), samples (list<string>)``, where
``label_probs`` are raw label probabilities in label-set order and ``samples`` are raw answers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

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
    check_recording_schema(ds.schema, p)
    for batch in ds.to_batches(
        columns=RECORDING_SCHEMA.names,
        filter=_of_annotator(ds.schema, annotator),
        batch_size=batch_size,
        batch_readahead=1,
        fragment_readahead=1,
    ):
        yield batch.cast(RECORDING_SCHEMA)


def load_recording_table(path: str | Path, annotator: str) -> pa.Table:
    """One annotator's rows of a recording (either format) as a ``RECORDING_SCHEMA`` table."""
    p = str(path)
    if p.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        table = trec_jsonl_to_recording(p)
        return table.filter(pc.equal(table.column("annotator"), annotator))
    loc = resolve(p)
    ds = pads.dataset(loc.path, format="parquet", filesystem=loc.fs)
    check_recording_schema(ds.schema, p)
    table = ds.to_table(columns=RECORDING_SCHEMA.names, filter=_of_annotator(ds.schema, annotator))
    return table.cast(RECORDING_SCHEMA)


def _of_annotator(schema: pa.Schema, annotator: str) -> pc.Expression:
    """The rows of ``annotator`` (a column of texts, or of whole numbers read as texts)."""
    col = pc.field("annotator")
    return (col if pa.types.is_string(schema.field("annotator").type) else col.cast(pa.string())) == annotator


def check_recording_schema(schema: pa.Schema, path: str) -> None:
    """A SchemaError naming each column of a recording that is missing or of a type that cannot
    be read as ``RECORDING_SCHEMA``'s (ids as text or whole numbers, probabilities as a list of
    numbers, the answers as a list of texts)."""
    missing = set(RECORDING_SCHEMA.names) - set(schema.names)
    if missing:
        raise SchemaError(f"recording {path}: missing columns {sorted(missing)}; expected {RECORDING_SCHEMA.names}")
    t = {name: schema.field(name).type for name in RECORDING_SCHEMA.names}

    def listed(typ: pa.DataType, ok: Callable[[pa.DataType], bool]) -> bool:
        return (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and ok(typ.value_type)

    def text_or_int(typ: pa.DataType) -> bool:
        return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_integer(typ)

    wrong = [
        f"{name} is {t[name]}; expected {want}"
        for name, good, want in [
            ("sample_id", text_or_int(t["sample_id"]), "text"),
            ("annotator", text_or_int(t["annotator"]), "text"),
            (
                "label_probs",
                listed(t["label_probs"], lambda v: pa.types.is_floating(v) or pa.types.is_integer(v)),
                "a list of numbers (one per label)",
            ),
            (
                "samples",
                listed(t["samples"], lambda v: pa.types.is_string(v) or pa.types.is_large_string(v)),
                "a list of texts (the sampled answers)",
            ),
        ]
        if not good
    ]
    if wrong:
        raise SchemaError(f"recording {path}: " + "; ".join(wrong))


def load_recording(path: str | Path, annotator: str) -> dict[str, tuple[list[float] | None, list[str] | None]]:
    """``sample_id -> (label_probs, samples)`` of one annotator, from either format."""
    table = load_recording_table(path, annotator)
    ids = table.column("sample_id").to_pylist()
    probs = table.column("label_probs").to_pylist()
    samples = table.column("samples").to_pylist()
    return {i: (lp, s) for i, lp, s in zip(ids, probs, samples)}
