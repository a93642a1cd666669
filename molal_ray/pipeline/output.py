"""The annotation table on disk: a folder of Parquet parts, each added atomically.

Layout::

    OUT/manifest.json           label set and annotators the table was written for
    OUT/parts/part-<key>.parquet  rows of ``schema.ANNOTATION_SCHEMA``
    OUT/summary.json            the last run's summary

A part is written to a temporary name and renamed into place, so a part either holds all its
rows or does not exist; its name is a hash of the (sample, annotator) pairs it holds, so a
batch retried by Ray Data replaces its own part instead of adding a second copy. Together with
skipping the pairs already present on a rerun, each pair is written exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from molal_ray import schema
from molal_ray.exceptions import ConfigError, SchemaError
from molal_ray.pipeline.prepare import hash_ids

MANIFEST = "manifest.json"
PARTS = "parts"
SUMMARY = "summary.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class OutputDir:
    root: Path

    @property
    def parts(self) -> Path:
        return self.root / PARTS


def open_output(path: str, mode: str, labels: list[str], annotators: list[str]) -> OutputDir:
    """Create or reopen an output folder; refuse one written for another label set."""
    root = Path(path)
    out = OutputDir(root)
    if root.exists() and any(root.iterdir()):
        if mode == "error":
            raise ConfigError(f"output.path: {root} exists and output.mode is 'error'; "
                              "expected a new folder (or mode 'resume' / 'overwrite')")
        if mode == "overwrite":
            shutil.rmtree(root)
    out.parts.mkdir(parents=True, exist_ok=True)
    manifest = root / MANIFEST
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("labels") != labels:
            raise ConfigError(f"output.path: {root} holds a table for labels {old.get('labels')}; "
                              f"the config has {labels}. Use another folder or output.mode: overwrite")
        names = sorted(set(old.get("annotators", [])) | set(annotators))
    else:
        names = list(annotators)
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format_version": FORMAT_VERSION, "labels": labels, "annotators": names},
                              indent=2))
    os.replace(tmp, manifest)
    for stale in out.parts.glob(".tmp-*"):  # parts of an interrupted run that never landed
        stale.unlink(missing_ok=True)
    return out


def part_name(sample_ids: list[str], annotators: list[str]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for s, a in sorted(zip(sample_ids, annotators)):
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        h.update(a.encode())
        h.update(b"\x01")
    return f"part-{h.hexdigest()}.parquet"


def write_part(parts_dir: Path, table: pa.Table) -> Path:
    """Write one part atomically (temp file, then rename)."""
    table = table.select(list(schema.ANNOTATION_COLUMNS)).cast(schema.ANNOTATION_SCHEMA)
    name = part_name(table.column(schema.SAMPLE_ID).to_pylist(), table.column(schema.ANNOTATOR).to_pylist())
    final = parts_dir / name
    tmp = parts_dir / f".tmp-{uuid.uuid4().hex}-{name}"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, final)
    return final


def _dataset(path: str | os.PathLike[str]) -> pads.Dataset:
    p = Path(path)
    target = p / PARTS if (p / PARTS).is_dir() else p
    if not target.exists():
        raise SchemaError(f"annotation table: got {str(p)!r}; expected a Parquet file or a label output folder")
    return pads.dataset(str(target), format="parquet", schema=schema.ANNOTATION_SCHEMA,
                        exclude_invalid_files=False, ignore_prefixes=[".", "_"])


def read_annotation_table(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """The whole annotation table (a label output folder or one Parquet file)."""
    return _dataset(path).to_table(columns=columns)


def load_done(out: OutputDir) -> dict[str, np.ndarray]:
    """Per annotator, the sorted id hashes of samples that already have a row."""
    table = _dataset(out.root).to_table(columns=[schema.SAMPLE_ID, schema.ANNOTATOR])
    done: dict[str, np.ndarray] = {}
    if table.num_rows == 0:
        return done
    ann = table.column(schema.ANNOTATOR).to_numpy(zero_copy_only=False)
    ids = table.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False)
    for name in np.unique(ann):
        done[str(name)] = np.sort(hash_ids(ids[ann == name]))
    return done


def is_done(done_sorted: np.ndarray | None, hashes: np.ndarray) -> np.ndarray:
    """Boolean mask: which hashes are in the sorted array."""
    if done_sorted is None or done_sorted.size == 0:
        return np.zeros(hashes.shape, dtype=bool)
    pos = np.searchsorted(done_sorted, hashes)
    pos[pos == done_sorted.size] = 0
    return done_sorted[pos] == hashes
