"""The annotation table on storage: a folder of Parquet files, added whole, each pair once.

The same machinery writes the predictions table of ``molal-ray predict`` (one row per sample
instead of per pair: :class:`~molal_ray.schema.TableKind`); what is said of pairs below holds
for its rows.

Layout (``OUT`` a local folder or a URI)::

    OUT/manifest.json                        label set and annotators the table was written for
    OUT/parts/part-b00003-<pairs>.parquet    rows of one batch, of pool bucket 3
    OUT/parts/data-b00003-<members>.parquet  parts of bucket 3 compacted into one file
    OUT/pool/                                the prepared pool (see ``pool_store``)
    OUT/summary.json                         the last run's summary, written last
    OUT/unreadable/                          table files found unreadable on reopening (their pairs asked again)

Why each (sample, annotator) pair is written exactly once, on a local disk or an object store:

- A file appears whole or not at all (``Location.write_parquet``: a rename on a disk, a single
  upload on an object store), and never changes after.
- A part's name is a hash of the pairs it holds: a batch retried by Ray Data writes the same
  name again, with the same rows, instead of a second copy.
- A rerun skips the pairs the table already holds (:class:`DoneIndex`, loaded per bucket).
- Compaction writes a ``data-`` file that lists, in its Parquet metadata, the parts it holds,
  and only then deletes those parts. Readers skip every part listed by a ``data-`` file, so a
  crash between the two steps never shows a pair twice; the next open deletes the leftovers.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from molal_ray import schema
from molal_ray.exceptions import ConfigError, SchemaError, one_line
from molal_ray.ids import hash_ids
from molal_ray.layout import LabelLayout
from molal_ray.schema import ANNOTATIONS, TableKind
from molal_ray.storage import Location, resolve

FORMAT_VERSION = 2
MEMBERS_KEY = b"molal.members"
COMPACT_TARGET_BYTES = 128 << 20


@dataclass(frozen=True)
class OutputDir(LabelLayout):
    """A label output folder opened for writing (its paths: :class:`~molal_ray.layout.LabelLayout`)."""

    buckets: int | None = None  # the pool bucket count the table is written with (None: not yet chosen)
    kind: TableKind = ANNOTATIONS  # what the parts hold


def open_output(
    path: str | Location,
    mode: str,
    labels: list[str],
    annotators: list[str],
    kind: TableKind = ANNOTATIONS,
    field: str = "output.path",
    fingerprints: dict[str, dict[str, Any]] | None = None,
) -> OutputDir:
    """Create or reopen an output folder of a table of ``kind``; refuse one written for another
    label set or holding another kind of table, or (``fingerprints``: annotator name -> what
    makes it answer as it does, ``serve/fingerprint.py``) one that holds answers of an annotator
    of the same name given with other settings: resumed, its rows would mix two annotators."""
    root = resolve(path, field=field)
    out = OutputDir(root, kind=kind)
    if not root.is_empty():
        if mode == "error":
            raise ConfigError(
                f"{field}: {root} exists and output.mode is 'error'; "
                "expected a new folder (or mode 'resume' / 'overwrite')"
            )
        if mode == "overwrite":
            root.delete_dir()
    out.parts.mkdirs()
    manifest = out.manifest
    if manifest.exists():
        old = manifest.read_json()
        found = old.get("table", ANNOTATIONS.name)
        if found != kind.name:
            raise ConfigError(
                f"{field}: {root} holds a table of {found}; this command writes {kind.name}. Use another folder"
            )
        if old.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"{field}: {root} holds a table of format {old.get('format_version')}; this version "
                f"writes format {FORMAT_VERSION}. Use another folder or output.mode: overwrite"
            )
        if old.get("labels") != labels:
            raise ConfigError(
                f"{field}: {root} holds a table for labels {old.get('labels')}; "
                f"the config has {labels}. Use another folder or output.mode: overwrite"
            )
        names = sorted(set(old.get("annotators", [])) | set(annotators))
        buckets = old.get("buckets")
        kept = old.get("fingerprints", {})
        _check_fingerprints(field, root, kept, fingerprints or {})
    else:
        names, buckets, kept = list(annotators), None, {}
    manifest.write_json(
        {
            "format_version": FORMAT_VERSION,
            "table": kind.name,
            "labels": labels,
            "annotators": names,
            "buckets": buckets,
            "fingerprints": {**kept, **(fingerprints or {})},
        }
    )
    out = OutputDir(root, buckets, kind)
    out.parts.delete_stale_temporaries()  # parts of an interrupted run that never landed
    set_aside_unreadable(out)
    _files, members = table_files(out.parts)
    for name in members:  # parts a compaction had already copied when it was interrupted
        out.parts.join(name).delete_file()
    return out


def _check_fingerprints(
    field: str, root: Location, kept: dict[str, dict[str, Any]], given: dict[str, dict[str, Any]]
) -> None:
    """A ConfigError when an annotator the table has answers of comes with other settings (a
    table written before fingerprints were kept has none to compare: accepted)."""
    from molal_ray.serve.fingerprint import differences

    for name, fp in given.items():
        if name in kept and kept[name] != fp:
            diff = differences(fp, kept[name], theirs="in the table")
            raise ConfigError(
                f"{field}: {root} holds answers of the annotator {name!r} given with other settings "
                f"({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}); resumed, its rows would mix two "
                "annotators. Expected the same settings, another name for the new annotator, another folder, "
                "or a new table (output.mode: overwrite, or --overwrite)"
            )


def check_table_settings(path: str | Location, given: dict[str, dict[str, Any]], field: str = "output.path") -> None:
    """Before a job resumes the table at ``path`` (if there is one): the ConfigError
    :func:`open_output` would raise for annotators of the same name with other settings."""
    root = resolve(path, field=field)
    _check_fingerprints(field, root, table_fingerprints(root), given)


def table_fingerprints(path: str | Location) -> dict[str, dict[str, Any]]:
    """The fingerprints of the annotators whose answers a table holds (none for a table written
    before they were kept)."""
    manifest = LabelLayout.at(path).manifest
    return dict(manifest.read_json().get("fingerprints", {})) if manifest.exists() else {}


def pin_buckets(out: OutputDir, buckets: int) -> OutputDir:
    """Record the pool bucket count the table is written with (parts are named per bucket, and
    a rerun must find a pair in the bucket it was written in)."""
    manifest = out.manifest
    data = manifest.read_json()
    data["buckets"] = buckets
    manifest.write_json(data)
    return OutputDir(out.root, buckets, out.kind)


# -- writing ------------------------------------------------------------------------------------
def part_name(sample_ids: list[str], annotators: list[str] | None, bucket: int = 0) -> str:
    h = hashlib.blake2b(digest_size=12)
    for s, a in sorted(zip(sample_ids, annotators if annotators is not None else [""] * len(sample_ids))):
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        h.update(a.encode())
        h.update(b"\x01")
    return f"part-b{bucket:05d}-{h.hexdigest()}.parquet"


def write_part(parts_dir: Location | str, table: pa.Table, bucket: int = 0, kind: TableKind = ANNOTATIONS) -> Location:
    """Write one part (whole or not at all), named after the pairs (rows) it holds."""
    parts_dir = resolve(parts_dir)
    table = table.select(kind.columns).cast(kind.schema)
    keys = table.column(kind.key).to_pylist() if kind.key else None
    name = part_name(table.column(schema.SAMPLE_ID).to_pylist(), keys, bucket)
    final = parts_dir.join(name)
    final.write_parquet(table, compression="zstd")
    return final


def unreadable_files(loc: Location, files: list[str]) -> list[tuple[str, str]]:
    """(path, why) of the Parquet files whose footer cannot be read (a truncated or foreign
    file); footers are read in parallel, since on an object store each is a request."""
    from concurrent.futures import ThreadPoolExecutor

    def why(path: str) -> str | None:
        try:
            pq.read_metadata(path, filesystem=loc.fs)
            return None
        except (pa.ArrowException, OSError) as exc:
            return one_line(exc)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [(f, w) for f, w in zip(files, pool.map(why, files)) if w is not None]


def set_aside_unreadable(out: OutputDir) -> list[str]:
    """Move the table's unreadable files to ``OUT/unreadable/`` with a warning, so that a
    resumed job asks their pairs again instead of failing on them; returns their names."""
    import logging

    bad = unreadable_files(out.parts, [i.path for i in out.parts.list(suffix=".parquet")])
    if not bad:
        return []
    aside = out.unreadable
    aside.mkdirs()
    names = []
    for path, why in bad:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        out.parts.fs.move(path, aside.join(name).path)
        names.append(name)
        logging.getLogger("molal_ray").warning(
            "annotation table %s: %s cannot be read (%s); moved to %s, its pairs will be asked again",
            out.root,
            name,
            why,
            aside,
        )
    return names


def _unreadable_error(loc: Location, files: list[str], exc: BaseException) -> SchemaError:
    bad = unreadable_files(loc, files)
    if not bad:  # every footer reads: the damage is inside a file
        return SchemaError(f"annotation table {loc}: cannot be read: {one_line(exc)}")
    shown = "; ".join(f"{p.rsplit('/', 1)[-1]} ({w})" for p, w in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    hint = (
        ". Resuming the label job (output.mode: resume) sets them aside and asks their pairs again"
        if loc.is_dir()
        else ""
    )
    return SchemaError(f"annotation table {loc}: {len(bad)} file(s) cannot be read: {shown}{more}{hint}")


# -- reading ------------------------------------------------------------------------------------
def _bucket_prefix(bucket: int | None) -> str:
    return "" if bucket is None else f"-b{bucket:05d}-"


def table_files(parts_dir: Location, bucket: int | None = None) -> tuple[list[Location], set[str]]:
    """The files that make up the table (of one bucket, or all) and the names of the parts that
    compacted files already hold (skipped)."""
    infos = parts_dir.list(suffix=".parquet")
    pre = _bucket_prefix(bucket)
    data = [i for i in infos if i.base_name.startswith("data" + pre if pre else "data-")]
    members: set[str] = set()
    for i in data:
        try:
            meta = pq.read_metadata(i.path, filesystem=parts_dir.fs).metadata or {}
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable_error(parts_dir, [i.path], exc) from None
        members.update(json.loads(meta.get(MEMBERS_KEY, b"[]")))
    parts = [
        i for i in infos if i.base_name.startswith("part" + pre if pre else "part-") and i.base_name not in members
    ]
    return [parts_dir.join(i.base_name) for i in (*data, *parts)], members


def _dataset(path: str | Location, kind: TableKind = ANNOTATIONS) -> pads.Dataset:
    loc = resolve(path)
    layout = LabelLayout(loc)
    if layout.holds_table():
        files, _ = table_files(layout.parts)
        return pads.dataset([f.path for f in files], format="parquet", filesystem=loc.fs, schema=kind.schema)
    if loc.is_file():
        try:
            return pads.dataset(loc.path, format="parquet", filesystem=loc.fs)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable_error(loc, [loc.path], exc) from None
    raise SchemaError(f"annotation table: got {str(loc)!r}; expected a Parquet file or a label output folder")


def _read(path: str | Location, kind: TableKind = ANNOTATIONS, **kwargs: Any) -> pa.Table:
    loc = resolve(path)
    dataset = _dataset(loc, kind)
    try:
        return dataset.to_table(**kwargs)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable_error(loc, dataset.files, exc) from None


def read_annotation_table(path: str | Location, columns: list[str] | None = None) -> pa.Table:
    """The whole annotation table (a label output folder or one Parquet file, a path or a URI);
    an unreadable file, or one without the table's key and answer columns, is a
    :class:`SchemaError` naming it."""
    t = _read(path, columns=columns)
    check_answer_columns(t, str(path), columns)
    return t


def check_answer_columns(t: pa.Table, where: str, columns: list[str] | None = None) -> None:
    """The columns an aggregator reads (those of ``columns`` when given) are there, probabilities
    and votes as lists of numbers (a Parquet file a user made may hold anything)."""
    needed = [
        c for c in (schema.SAMPLE_ID, schema.ANNOTATOR, schema.PROBS, schema.VOTES) if columns is None or c in columns
    ]
    missing = [c for c in needed if c not in t.column_names]
    if missing:
        raise SchemaError(f"annotations {where}: missing columns {missing}; got {t.column_names}")
    for c in (schema.PROBS, schema.VOTES):
        if c not in needed:
            continue
        typ = t.schema.field(c).type
        if not (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)) or not (
            pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)
        ):
            raise SchemaError(f"annotations {where}: column {c!r} is {typ}; expected a list of numbers per row")


def read_annotation_rows(path: str | Location, sample_ids: list[str]) -> pa.Table:
    """The rows of the table about these samples (read with a filter, not whole)."""
    want = pa.array(list(sample_ids), pa.string())
    return _read(path, filter=pc.is_in(pc.field(schema.SAMPLE_ID), value_set=want))


def read_table_labels(path: str | Location) -> list[str] | None:
    """The label set a label output folder's table was written for (its manifest: the order of
    every ``probs`` and ``votes`` list), or None for a single Parquet file or a folder without one."""
    loc = resolve(path)
    f = LabelLayout(loc).manifest
    if not (loc.is_dir() and f.exists()):
        return None
    labels = f.read_json().get("labels")
    return [str(x) for x in labels] if isinstance(labels, list) else None


def check_table_labels(path: str | Location, given: list[str] | None) -> list[str]:
    """The label set to read the table at ``path`` with: its manifest's; ``given`` (``--labels``)
    must then be the same labels in the same order (the lists' positions are the labels); a table
    without a manifest needs ``given``. Raises :class:`ConfigError` saying which and why."""
    written = read_table_labels(path)
    if written is None:
        if given is None:
            raise ConfigError(
                f"--labels: {path} has no manifest naming its labels (a single Parquet file?); give the labels "
                "in the order of its probs and votes ('a,b,c' or a file with one a line)"
            )
        return given
    if given is not None and given != written:
        same_set = sorted(given) == sorted(written)
        raise ConfigError(
            f"--labels: got {given}; the table in {path} was written for {written}"
            + (" (the same labels in another order: its probs and votes follow the manifest's)" if same_set else "")
            + "; leave --labels out to use the manifest's"
        )
    return written


def read_cascade(path: str | Location) -> dict[str, Any] | None:
    """The cascade a label output folder was written with (its ``cascade.json``), or None."""
    loc = resolve(path)
    f = LabelLayout(loc).cascade
    return f.read_json() if loc.is_dir() and f.exists() else None


def read_table(path: str | Location, kind: TableKind, **kwargs: Any) -> pa.Table:
    """A table of ``kind`` written by this module (``columns``, ``filter``: as ``Dataset.to_table``)."""
    return _read(path, kind, **kwargs)


def iter_annotation_table(
    path: str | Location, columns: list[str] | None = None, batch_size: int = 16384
) -> Iterator[pa.RecordBatch]:
    """The table batch by batch, one file at a time (memory stays flat whatever its size)."""
    loc = resolve(path)
    layout = LabelLayout(loc)
    if layout.holds_table():
        files = [f.path for f in table_files(layout.parts)[0]]
    elif loc.is_file():
        files = [loc.path]
    else:
        raise SchemaError(f"annotation table: got {str(loc)!r}; expected a Parquet file or a label output folder")
    for f in files:
        try:
            with loc.fs.open_input_file(f) as fh:
                yield from pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=columns, use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable_error(loc, [f], exc) from None


class DoneIndex:
    """Which (sample, annotator) pairs the table already holds, loaded per pool bucket on first
    use, so a resumed job never loads (or ships) the whole table's keys to every worker: an
    annotate actor holds the keys of the few buckets it is working on. Also the rows themselves
    of some annotators (:meth:`rows`: a resumed cascade's earlier answers), cached the same way."""

    def __init__(
        self,
        parts_dir: Location | str,
        *,
        empty: bool = False,
        cached_buckets: int = 4,
        kind: TableKind = ANNOTATIONS,
    ) -> None:
        self.parts_dir = resolve(parts_dir)
        self.kind = kind
        self.empty = empty  # a first run: nothing to load
        self.cached_buckets = cached_buckets
        self._cache: OrderedDict[int | None, dict[str, np.ndarray]] = OrderedDict()
        self._rows: OrderedDict[tuple[int | None, tuple[str, ...]], pa.Table] = OrderedDict()

    def _read(self, bucket: int | None, columns: list[str] | None = None, expr: Any = None) -> pa.Table | None:
        files, _ = table_files(self.parts_dir, bucket)
        if not files:
            return None
        paths = [f.path for f in files]
        try:
            return pads.dataset(
                paths, format="parquet", filesystem=self.parts_dir.fs, schema=self.kind.schema
            ).to_table(columns=columns, filter=expr)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable_error(self.parts_dir, paths, exc) from None

    def _cached(self, cache: OrderedDict[Any, Any], key: Any, load: Any) -> Any:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        cache[key] = value = load()
        while len(cache) > self.cached_buckets:
            cache.popitem(last=False)
        return value

    def _load(self, bucket: int | None) -> dict[str, np.ndarray]:
        def load() -> dict[str, np.ndarray]:
            done: dict[str, np.ndarray] = {}
            key = self.kind.key
            t = self._read(bucket, columns=[schema.SAMPLE_ID, *([key] if key else [])])
            if t is not None:
                ids = t.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False)
                if key is None:  # a row per sample: one set of ids
                    done[""] = np.sort(hash_ids(ids))
                    return done
                ann = t.column(key).to_numpy(zero_copy_only=False)
                for name in np.unique(ann):
                    done[str(name)] = np.sort(hash_ids(ids[ann == name]))
            return done

        return self._cached(self._cache, bucket, load)

    def mask(self, annotator: str, hashes: np.ndarray, bucket: int | None = None) -> np.ndarray:
        """True where the pair (sample with this id hash, annotator) is already in the table;
        ``bucket`` None looks through the whole table (small tables: the loop's). A table keyed by
        ``sample_id`` alone (predictions) takes ``annotator`` ''."""
        if self.empty:
            return np.zeros(len(hashes), dtype=bool)
        return is_done(self._load(bucket).get(annotator), hashes)

    def rows(self, bucket: int | None, annotators: list[str]) -> pa.Table:
        """The rows of ``annotators`` one bucket of the table held when first asked (this run's
        own writes later are not seen: :meth:`forget`)."""
        if self.empty or not annotators:
            return schema.ANNOTATION_SCHEMA.empty_table()

        def load() -> pa.Table:
            t = self._read(bucket, expr=pads.field(schema.ANNOTATOR).isin(annotators))
            return t if t is not None else schema.ANNOTATION_SCHEMA.empty_table()

        return self._cached(self._rows, (bucket, tuple(annotators)), load)

    def forget(self) -> None:
        self._cache.clear()
        self._rows.clear()


def is_done(done_sorted: np.ndarray | None, hashes: np.ndarray) -> np.ndarray:
    """Boolean mask: which hashes are in the sorted array."""
    if done_sorted is None or done_sorted.size == 0:
        return np.zeros(hashes.shape, dtype=bool)
    pos = np.searchsorted(done_sorted, hashes)
    pos[pos == done_sorted.size] = 0
    return done_sorted[pos] == hashes


# -- compaction -----------------------------------------------------------------------------------
def compact_bucket(
    parts_dir: Location | str, bucket: int, target_bytes: int = COMPACT_TARGET_BYTES, kind: TableKind = ANNOTATIONS
) -> int:
    """Merge the parts of one bucket into files of about ``target_bytes``; returns the parts
    merged. Safe to interrupt at any point (see the module docstring)."""
    parts_dir = resolve(parts_dir)
    pre = _bucket_prefix(bucket)
    _, members = table_files(parts_dir, bucket)
    parts = [i for i in parts_dir.list(prefix="part" + pre, suffix=".parquet") if i.base_name not in members]
    groups: list[list[pa.fs.FileInfo]] = [[]]
    size = 0
    for i in parts:
        if groups[-1] and size + (i.size or 0) > target_bytes:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += i.size or 0
    merged = 0
    for group in groups:
        if len(group) < 2:
            continue
        names = [i.base_name for i in group]
        digest = hashlib.blake2b("\n".join(names).encode(), digest_size=12).hexdigest()
        target = parts_dir.join(f"data{pre}{digest}.parquet")
        sch = kind.schema.with_metadata({MEMBERS_KEY: json.dumps(names).encode()})
        with target.open_write() as f, pq.ParquetWriter(f, sch, compression="zstd") as writer:
            for i in group:  # one part at a time: memory stays flat
                with parts_dir.fs.open_input_file(i.path) as src:
                    writer.write_table(pq.read_table(src, schema=kind.schema).replace_schema_metadata(sch.metadata))
        for i in group:
            parts_dir.join(i.base_name).delete_file()
        merged += len(group)
    return merged


LOCAL_COMPACT_BYTES = 32 << 20
"""Outputs whose parts hold at most this many bytes are compacted in the calling process (one
bucket after the other, one part in memory at a time); larger ones by Ray tasks, one per bucket.
Below it the tasks' first start costs more than the work: 20,000 predictions in 16 parts took
0.09-0.19 s in the driver, 4.2 s as the first Ray tasks of a process and 0.17 s as the next
(``benchmarks/predict_speed.py --skip-speed --skip-scale``, with the test suite running beside)."""


def compact(out: OutputDir, buckets: int, num_cpus: float) -> int:
    """Merge each bucket's parts into files of about 128 MB: in this process for a small output,
    else Ray tasks, one per bucket (the same :func:`compact_bucket` either way)."""
    parts = out.parts
    if sum(max(i.size or 0, 0) for i in parts.list(prefix="part-", suffix=".parquet")) <= LOCAL_COMPACT_BYTES:
        return sum(compact_bucket(parts, k, COMPACT_TARGET_BYTES, out.kind) for k in range(buckets))
    import ray

    task: Any = ray.remote(num_cpus=num_cpus)(compact_bucket)
    return sum(ray.get([task.remote(parts, k, COMPACT_TARGET_BYTES, out.kind) for k in range(buckets)]))
