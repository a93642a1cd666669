"""The pool's frozen embeddings: the loop's head classifier (``classifier.mode: head``) and the
text-aware aggregator read them. Computed once per pool and encoder, and shared.

Ray Data runs the frozen encoder over the prepared pool (an actor pool of encoders; CPUs, GPUs
and concurrency from the classifier config), one bucket file per call, and writes, for each
bucket, a file aligned row for row and row group for row group with it::

    CACHE/<pool key>-<encoder key>/embed-00003.parquet   _row, sample_id, embedding (fixed-size list)
    CACHE/<pool key>-<encoder key>/_manifest.json        written last: pool key, encoder fingerprint, dimension

``CACHE`` is ``classifier.embeddings_cache``, by default ``_embeddings`` beside the output
folder, so that loops and aggregations of the same pool by the same encoder (a comparison, a new
seed, ``molal-ray aggregate --pool``) embed it once (:func:`shared_store`; a build holds a lock,
and a second job waits for it instead of embedding the pool again). A prepared pool's row keys
depend only on the pool's files, so any job that prepares the same files reads the same rows.

A read of some row keys reads the same row groups as in the pool (``read_items``), and an
interrupted build is resumed: each file appears whole or not at all (``Location.open_write``),
and a bucket whose file exists is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from molal_ray import schema
from molal_ray.config.job import PoolConfig, RayConfig
from molal_ray.config.training import ClassifierConfig
from molal_ray.exceptions import ConfigError, SchemaError
from molal_ray.pipeline.pool_store import MANIFEST, ROW_GROUP_ROWS, PreparedPool, bucket_file, read_row_groups
from molal_ray.pipeline.prepare import ROW
from molal_ray.storage import Location, resolve

logger = logging.getLogger("molal_ray.pipeline")

EMBEDDING = "embedding"
EMBED_KIND = "embed"
CACHE_DIR = "_embeddings"  # beside the output folder, unless classifier.embeddings_cache names one
WAIT_POLL_S = 5.0  # how often a job waiting for another's build of the same embeddings looks again


def embed_schema(dim: int) -> pa.Schema:
    return pa.schema([(ROW, pa.int64()), (schema.SAMPLE_ID, pa.string()), (EMBEDDING, pa.list_(pa.float32(), dim))])


def as_matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column -> (N, dim) float32."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dim = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), dim)


NO_RESTARTS = {"max_restarts": 0, "max_task_retries": 0}  # passed as keywords, for the type checker
"""Actor options of the loop's Ray Data actor pools: a lost actor fails the step and a rerun
(``--resume``) picks it up (finished embedding buckets are kept). Ray Data's own default
(restarts, with the actor's arguments in the object store) makes Ray log an error line at every
start (ray-project/ray#53727)."""


@contextmanager
def actor_options_accepted() -> Iterator[None]:
    """Ray 2.60 names no parameter for an actor pool's restarts and warns that extra remote
    arguments (``max_restarts``) will go in Ray 2.64 (the project pins Ray below 2.61)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        yield


class EmbedBuckets:
    """``map_batches`` UDF (an actor: the encoder loads once): ``bucket`` numbers -> their embed
    files written, one row group at a time (memory stays flat), and their row counts."""

    def __init__(
        self,
        pool_folder: Location,
        out: Location,
        backbone: str,
        max_length: int,
        device: str,
        threads: int | None,
        batch_size: int,
        first_tokens: int = 0,
    ) -> None:
        from molal_ray.training.encoder import FrozenEncoder

        self.pool_folder, self.out = pool_folder, out
        self.encoder = FrozenEncoder(
            backbone, max_length, device=device, threads=threads, batch_size=batch_size, first_tokens=first_tokens
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = []
        for b in batch.column("bucket").to_pylist():
            dst = self.out.join(bucket_file(EMBED_KIND, b))
            src = self.pool_folder.join(bucket_file("bucket", b))
            rows = 0
            if not dst.exists():  # resumed: a file that exists is whole
                sch = embed_schema(self.encoder.dim)
                with (
                    src.fs.open_input_file(src.path) as fin,
                    dst.open_write() as fout,
                    pq.ParquetWriter(fout, sch) as w,
                ):
                    pf = pq.ParquetFile(fin)
                    for g in range(pf.num_row_groups):
                        t = pf.read_row_group(g, columns=[ROW, schema.SAMPLE_ID, schema.TEXT])
                        emb = self.encoder(t.column(schema.TEXT).to_pylist())
                        vals = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), emb.shape[1])
                        w.write_table(
                            pa.table([t.column(ROW), t.column(schema.SAMPLE_ID), vals], schema=sch),
                            row_group_size=ROW_GROUP_ROWS,
                        )
                        rows += t.num_rows
            done.append({"bucket": b, "rows": rows, "dim": self.encoder.dim})
        return pa.Table.from_pylist(done)


class EmbeddingStore:
    """The embeddings of a prepared pool: Ray Datasets and fetches by row key."""

    def __init__(self, folder: Location, pool: PreparedPool, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.pool = pool
        self.manifest = manifest
        self.dim = int(manifest["dim"])

    @staticmethod
    def fingerprint(pool: PreparedPool, cfg: ClassifierConfig) -> dict[str, Any]:
        from molal_ray.training.encoder import encoder_fingerprint

        return {
            "pool": pool.manifest.key(),
            "encoder": encoder_fingerprint(cfg.backbone, cfg.max_length, cfg.first_tokens),
        }

    @classmethod
    def open(cls, folder: str | Location, pool: PreparedPool, cfg: ClassifierConfig) -> EmbeddingStore | None:
        loc = resolve(folder)
        m = loc.join(MANIFEST)
        if not m.exists():
            return None
        d = m.read_json()
        return cls(loc, pool, d) if d.get("fingerprint") == cls.fingerprint(pool, cfg) else None

    @classmethod
    def build(cls, pool: PreparedPool, folder: str | Location, cfg: ClassifierConfig) -> EmbeddingStore:
        """Embed every usable row of ``pool`` into ``folder`` (reused when it holds this pool's
        embeddings by this encoder; finished buckets of an interrupted build are kept)."""
        import ray.data

        loc = resolve(folder)
        old = cls.open(loc, pool, cfg)
        if old is not None:
            logger.info("embeddings in %s match the pool and the encoder; reused", loc)
            return old
        fp = cls.fingerprint(pool, cfg)
        marker = loc.join("_building.json")
        if not marker.exists() or marker.read_json() != fp:  # another pool or encoder: start afresh
            loc.delete_dir()
            loc.mkdirs()
            marker.write_json(fp)
        loc.delete_stale_temporaries()
        buckets = [{"bucket": b} for b, n in enumerate(pool.manifest.usable) if n]
        dim = 0
        if buckets:
            with actor_options_accepted():
                ds = ray.data.from_items(buckets, override_num_blocks=len(buckets)).map_batches(
                    EmbedBuckets,
                    fn_constructor_kwargs={
                        "pool_folder": pool.folder,
                        "out": loc,
                        "backbone": cfg.backbone,
                        "max_length": cfg.max_length,
                        "device": "cuda" if cfg.use_gpu else "cpu",
                        "threads": cfg.threads,
                        "batch_size": cfg.inference_batch_size,
                        "first_tokens": cfg.first_tokens,
                    },
                    batch_size=1,
                    batch_format="pyarrow",
                    num_cpus=cfg.cpus_per_worker,
                    num_gpus=1 if cfg.use_gpu else 0,
                    compute=ray.data.ActorPoolStrategy(size=min(cfg.inference_concurrency, len(buckets))),
                    max_restarts=0,
                    max_task_retries=0,
                )  # see NO_RESTARTS
            from molal_ray.runtime import long_blocks

            ds = long_blocks(ds)  # a bucket is embedded whole: minutes to hours on a CPU
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                dim = int(pa.table(batch).column("dim")[0].as_py())
        manifest = {"fingerprint": fp, "dim": dim}
        loc.join(MANIFEST).write_json(manifest)
        marker.delete_file()
        return cls(loc, pool, manifest)

    # reads --------------------------------------------------------------------------------
    def read_items(self, keys: np.ndarray | None = None) -> list[dict[str, Any]]:
        """The pool's read units, pointed at the embed files (same row groups, same positions)."""
        items = self.pool.read_items(keys=keys)
        for item in items:
            item["file"] = item["file"].replace("bucket-", f"{EMBED_KIND}-", 1)
        return items

    def dataset(self, keys: np.ndarray | None = None, num_cpus: float = 0.25):
        """A Ray Dataset of ``_row, sample_id, embedding`` of the usable rows (or of ``keys``)."""
        import ray.data

        items = self.read_items(keys)
        cols = [ROW, schema.SAMPLE_ID, EMBEDDING]
        if not items:
            return ray.data.from_arrow(embed_schema(self.dim).empty_table())
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            read_row_groups,  # type: ignore[arg-type]  # Ray's stubs: no fn_kwargs
            fn_kwargs={"folder": self.folder, "columns": cols},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=num_cpus,
        )

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """(sample ids (N,), embeddings (N, dim)) of every usable row, in row-key order (read in
        this process: N x dim x 4 bytes of memory)."""
        files = [self.folder.join(bucket_file(EMBED_KIND, b)) for b, n in enumerate(self.pool.manifest.usable) if n]
        if not files:
            return np.zeros(0, dtype=object), np.zeros((0, self.dim), np.float32)
        parts = [f.read_parquet(columns=[schema.SAMPLE_ID, EMBEDDING]) for f in files]
        t = pa.concat_tables(parts)
        return (np.asarray(t.column(schema.SAMPLE_ID).to_pylist(), dtype=object), as_matrix(t.column(EMBEDDING)))

    def fetch(self, keys: np.ndarray) -> np.ndarray:
        """(len(keys), dim) embeddings in the order of ``keys`` (read in this process)."""
        keys = np.asarray(keys, dtype=np.int64)
        if keys.size == 0:
            return np.zeros((0, self.dim), np.float32)
        items = self.read_items(keys)
        t = pa.concat_tables(
            [read_row_groups(pa.Table.from_pylist([it]), self.folder, [ROW, EMBEDDING]) for it in items]
        ).sort_by(ROW)
        rows = t.column(ROW).to_numpy()
        at = np.searchsorted(rows, keys)
        if (at >= len(rows)).any() or (rows[np.minimum(at, len(rows) - 1)] != keys).any():
            raise SchemaError("embeddings: some row keys have no embedding")
        return as_matrix(t.column(EMBEDDING))[at]


def cache_root(out: Location, cfg: ClassifierConfig) -> Location:
    """Where shared embeddings live: ``classifier.embeddings_cache``, else ``_embeddings``
    beside the output folder ``out`` (on the same storage, so every node that reaches the output
    reaches them)."""
    if cfg.embeddings_cache:
        return resolve(cfg.embeddings_cache, field="classifier.embeddings_cache")
    return out.parent.join(CACHE_DIR)


def store_folder(root: Location, pool: PreparedPool, cfg: ClassifierConfig) -> Location:
    """The folder of this pool's embeddings by this encoder under ``root``."""
    fp = EmbeddingStore.fingerprint(pool, cfg)
    enc = hashlib.blake2b(json.dumps(fp["encoder"], sort_keys=True).encode(), digest_size=6).hexdigest()
    return root.join(f"{fp['pool']}-{enc}")


def shared_store(
    pool: PreparedPool, root: Location, cfg: ClassifierConfig, *, wait_s: float = 3600.0
) -> EmbeddingStore:
    """This pool's embeddings by this encoder under ``root``: reused when there, else built
    under a lock; a job that finds another building them waits for it (up to ``wait_s``), then
    reuses them (or finishes the build, when the other died)."""
    from molal_ray.lock import OutputLock, OutputLocked

    folder = store_folder(root, pool, cfg)
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        found = EmbeddingStore.open(folder, pool, cfg)
        if found is not None:
            logger.info("embeddings of this pool by this encoder found in %s; reused", folder)
            return found
        try:
            with OutputLock(folder, "embed"):
                return EmbeddingStore.build(pool, folder, cfg)
        except OutputLocked:
            if time.monotonic() > deadline:
                raise
            if not told:
                logger.info("another job is embedding this pool into %s; waiting for it", folder)
                told = True
            time.sleep(WAIT_POLL_S)


POOLS_DIR = "_pools"  # prepared pools of `molal-ray aggregate --pool`, under the cache, by fingerprint


def pool_embeddings(
    pool_cfg: PoolConfig, cfg: ClassifierConfig, root: Location, ray: RayConfig, num_cpus: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Every usable row's (sample id, embedding) of the pool ``pool_cfg``, prepared and embedded
    (Ray Data, on the runtime ``ray`` names) once under ``root`` and reused by later calls on the
    same files and encoder; returns (ids (N,), embeddings (N, D) float32). Raises
    :class:`ConfigError` for pool files that cannot be read or an encoder that cannot be loaded
    (before Ray starts), or a pool without a usable row (before embedding anything)."""
    from molal_ray.preflight import check_encoder, pool_problems
    from molal_ray.runtime import ensure_ray

    problems = pool_problems(pool_cfg, field="--pool")
    if problems:
        raise ConfigError("; ".join(problems))
    check_encoder(cfg.backbone, field="--encoder")
    ensure_ray(ray)
    prepared = root.join(
        POOLS_DIR,
        hashlib.blake2b(
            json.dumps(pool_cfg.model_dump(mode="json"), sort_keys=True).encode(), digest_size=8
        ).hexdigest(),
    )
    pool = PreparedPool.build(pool_cfg, prepared, num_cpus=num_cpus)
    if pool.n_usable == 0:
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(pool.manifest.flagged_by_kind.items()))
        raise ConfigError(
            f"--pool: none of its {pool.n_flagged} rows is usable ({kinds}); is the id or text "
            "column another one (--id-column, --text-column)?"
        )
    store = shared_store(pool, root, cfg)
    return store.read_all()
