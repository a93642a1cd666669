"""Replay engine: serves recorded annotations by sample id, through the live answer parser.

It lets the whole system run on real annotator behaviour without a GPU. Raw answers go through
the same :class:`AnswerParser` as free-text live engines; an id not in the recording is an
error row (``unknown_sample``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from molal_ray import schema
from molal_ray.annotation import Annotation, AnswerParser
from molal_ray.annotation.result import normalise_probs
from molal_ray.config import ReplayEngineConfig
from molal_ray.engines.base import Engine
from molal_ray.engines.recording import iter_recording
from molal_ray.exceptions import AnnotatorError
from molal_ray.ids import hash_ids


class ReplayEngine(Engine):
    """Answers from a recording, looked up by id hash in arrays built once at start: a pool of
    millions costs a few numeric arrays per replica, not a Python object per recorded row."""

    engine_type = "replay"
    config_cls = ReplayEngineConfig
    config: ReplayEngineConfig

    def __init__(self, annotator, task) -> None:
        super().__init__(annotator, task)
        self.source = self.config.source_annotator or annotator.name
        self._index: RecordingIndex | None = None
        self._serial = asyncio.Lock()

    async def start(self) -> None:
        try:
            batches = iter_recording(self.config.path, self.source)
            self._index = RecordingIndex.build(batches, self.parser, self.task.num_classes)
        except FileNotFoundError:
            raise AnnotatorError(f"replay engine {self.name}: recording not found: {self.config.path}") from None
        except AnnotatorError:
            raise AnnotatorError(
                f"replay engine {self.name}: the recording {self.config.path} has no rows of annotator {self.source!r}"
            ) from None

    async def annotate(self, sample_ids: Sequence[str], texts: Sequence[str]) -> list[Annotation]:
        if self._index is None:
            raise AnnotatorError(f"replay engine {self.name}: annotate() before start()")
        if self.config.latency_s_per_text > 0:
            if self.config.latency_serial:
                async with self._serial:
                    await asyncio.sleep(self.config.latency_s_per_text * len(sample_ids))
            else:
                await asyncio.sleep(self.config.latency_s_per_text * len(sample_ids))
        return self._index.lookup(sample_ids)

    async def check_health(self) -> None:
        if self._index is None:
            raise AnnotatorError(f"replay engine {self.name}: not started")


class RecordingIndex:
    """One annotator's recording as arrays sorted by id hash: probabilities (normalised), vote
    shares, invalid and sample counts, and the rows' errors or warnings. Built batch
    by batch, so a recording of millions of rows never sits in memory as Arrow strings at once."""

    def __init__(
        self,
        hashes: np.ndarray,
        probs: np.ndarray,
        votes: np.ndarray,
        n_invalid: np.ndarray,
        n_samples: np.ndarray,
        errors: dict[int, str],
        warnings: dict[int, str],
    ) -> None:
        self.hashes, self.probs, self.votes = hashes, probs, votes
        self.n_invalid, self.n_samples = n_invalid, n_samples
        self.errors, self.warnings = errors, warnings

    @classmethod
    def build(
        cls, batches: Iterable[pa.RecordBatch | pa.Table], parser: AnswerParser, num_classes: int
    ) -> RecordingIndex:
        chunks = [_index_chunk(b, parser, num_classes) for b in batches]
        chunks = [c for c in chunks if len(c["hashes"])]
        if not chunks:
            raise AnnotatorError("replay: the recording has no rows")
        offsets = np.cumsum([0] + [len(c["hashes"]) for c in chunks])
        hashes = np.concatenate([c["hashes"] for c in chunks])
        order = np.argsort(hashes, kind="stable")
        where = np.empty_like(order)
        where[order] = np.arange(len(order))
        errors: dict[int, str] = {}
        warnings: dict[int, str] = {}
        for c, off in zip(chunks, offsets):
            errors.update({int(where[off + i]): e for i, e in c["errors"].items()})
            warnings.update({int(where[off + i]): w for i, w in c["warnings"].items()})

        def cat(name: str) -> np.ndarray:
            return np.concatenate([c[name] for c in chunks])[order]

        index = cls(hashes[order], cat("probs"), cat("votes"), cat("n_invalid"), cat("n_samples"), errors, warnings)
        pa.default_memory_pool().release_unused()
        return index

    def lookup(self, sample_ids: Sequence[str]) -> list[Annotation]:
        h = hash_ids(list(sample_ids))
        pos = np.minimum(np.searchsorted(self.hashes, h), max(len(self.hashes) - 1, 0))
        found = self.hashes[pos] == h
        out = []
        for sid, i, hit in zip(sample_ids, pos.tolist(), found.tolist()):
            if not hit:
                out.append(Annotation.failed(f"{schema.ERR_UNKNOWN_SAMPLE}: {sid!r} is not in the recording"))
            elif i in self.errors:
                out.append(Annotation.failed(self.errors[i]))
            else:
                out.append(
                    Annotation(
                        probs=self.probs[i],
                        votes=self.votes[i],
                        n_invalid=int(self.n_invalid[i]),
                        n_samples=int(self.n_samples[i]),
                        warning=self.warnings.get(i),
                    )
                )
        return out


def _index_chunk(batch: pa.RecordBatch | pa.Table, parser: AnswerParser, C: int) -> dict[str, Any]:
    """Arrays of one batch of recorded rows (see :class:`RecordingIndex`)."""
    n = batch.num_rows
    hashes = hash_ids(batch.column("sample_id").to_numpy(zero_copy_only=False))
    # Answers: each distinct string is parsed once, then mapped back by dictionary code.
    samples = _array(batch.column("samples"))
    n_samples = pc.fill_null(pc.list_value_length(samples), 0).to_numpy(zero_copy_only=False).astype(np.int32)
    enc = pc.dictionary_encode(pc.list_flatten(samples))
    parsed = np.array(
        [-1 if (k := parser.parse(v)) is None else k for v in enc.dictionary.to_pylist()] + [-1], dtype=np.int64
    )
    codes = pc.fill_null(enc.indices, len(enc.dictionary)).to_numpy(zero_copy_only=False)
    label = parsed[codes]
    parent = pc.list_parent_indices(samples).to_numpy(zero_copy_only=False)
    ok = label >= 0
    votes = np.zeros((n, C), np.float32)
    np.add.at(votes, (parent[ok], label[ok]), 1.0)
    votes /= np.maximum(n_samples, 1)[:, None]
    n_invalid = np.bincount(parent[~ok], minlength=n).astype(np.int32)
    # Label probabilities: a vector of the label set's length, normalised over it.
    lp = _array(batch.column("label_probs"))
    lengths = pc.fill_null(pc.list_value_length(lp), -1).to_numpy(zero_copy_only=False)
    probs = np.full((n, C), np.nan, np.float64)
    right = lengths == C
    if right.any():
        probs[right] = (
            pc.list_flatten(lp.filter(pa.array(right))).to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, C)
        )
    errors = {
        int(i): f"bad_probs: got {None if lengths[i] < 0 else int(lengths[i])} label probabilities; expected {C}"
        for i in np.flatnonzero(~right)
    }
    total = probs.sum(1)
    usable = right & np.isfinite(probs).all(1) & (probs >= 0).all(1) & (total > 0)
    probs[usable] /= total[usable, None]
    # No usable mass: the row keeps its votes; probs become uniform and the row is flagged.
    warnings = {int(i): f"uniform_probs: {normalise_probs(probs[i])[1]}" for i in np.flatnonzero(right & ~usable)}
    probs[~usable] = 1.0 / C
    return {
        "hashes": hashes,
        "probs": probs,
        "votes": votes,
        "n_invalid": n_invalid,
        "n_samples": n_samples,
        "errors": errors,
        "warnings": warnings,
    }


def _array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
