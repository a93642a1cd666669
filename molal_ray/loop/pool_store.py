"""The loop's pool, kept on disk: ids in the driver, texts fetched by id when a round needs them.

At the start of a loop the pool is read and prepared by Ray Data (ids and texts decoded, bad rows
flagged, as in the label pipeline) and written once as Parquet under ``OUT/pool/``; the driver
reads back only the ``sample_id, source, pool_error`` columns. A round then fetches the texts it
needs (the candidates it scores, the rows it trains on) with a filtered read, so a pool of
millions of texts never sits in the driver's memory.

A repeated id keeps one row: the first by ``source`` (``file:row``) among the unflagged copies;
the others are flagged ``duplicate_id``. Ray Data's read tasks finish in any order, so ids are
sorted: the test split and the gold draws depend on the seed only.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from molal_ray import schema
from molal_ray.pipeline.pool import SOURCE

logger = logging.getLogger("molal_ray.loop")

POOL_DIR = "pool"
FLAGGED_POOL = "pool_flagged.parquet"  # pool rows left out of the loop, with why
_DUP = schema.ERR_DUPLICATE_ID + ": another row has this id (kept: the first by source)"


def _keep_first(df: pd.DataFrame) -> pd.DataFrame:
    """Sorted by id then source; later copies of an unflagged id get the duplicate error."""
    df = df.sort_values([schema.SAMPLE_ID, SOURCE], kind="stable").reset_index(drop=True)
    ok = df[schema.POOL_ERROR].isna()
    dup = ok & df[schema.SAMPLE_ID].where(ok).duplicated()
    df.loc[dup, schema.POOL_ERROR] = _DUP
    return df


class PoolStore:
    """Texts of the loop's pool by id, read from ``folder`` (written by :meth:`build`)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._dataset = pads.dataset(str(self.folder), format="parquet")
        self._cache: dict[str, str] = {}

    @classmethod
    def build(cls, pool_cfg, cpus: float, out: Path) -> tuple["PoolStore", np.ndarray, int]:  # type: ignore[no-untyped-def]
        """Prepare and write the pool under ``out/pool``; returns the store, the usable ids
        (sorted) and the number of flagged rows (listed in ``out/pool_flagged.parquet``)."""
        from molal_ray.pipeline.label_job import build_prepared

        folder = out / POOL_DIR
        if folder.exists():
            shutil.rmtree(folder)  # written afresh every start: the config may point at a changed pool
        out.mkdir(parents=True, exist_ok=True)
        build_prepared(pool_cfg, cpus).select_columns([schema.SAMPLE_ID, schema.TEXT, schema.POOL_ERROR, SOURCE]) \
            .write_parquet(str(folder), ray_remote_args={"num_cpus": cpus})
        if not any(folder.glob("*.parquet")):  # an empty pool writes no file
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({schema.SAMPLE_ID: pa.array([], pa.string()), schema.TEXT: pa.array([], pa.string()),
                                     schema.POOL_ERROR: pa.array([], pa.string()), SOURCE: pa.array([], pa.string())}),
                           folder / "empty.parquet")
        meta = _keep_first(pq.read_table(str(folder), columns=[schema.SAMPLE_ID, SOURCE, schema.POOL_ERROR]).to_pandas())
        bad = meta[schema.POOL_ERROR].notna()
        if bad.any():
            logger.warning("%d pool rows are flagged and left out of the loop (first: %s)", int(bad.sum()),
                           meta.loc[bad, schema.POOL_ERROR].iloc[0])
        meta.loc[bad].to_parquet(out / FLAGGED_POOL, index=False)
        return cls(folder), meta.loc[~bad, schema.SAMPLE_ID].to_numpy(dtype=object), int(bad.sum())

    def texts(self, ids: Iterable[str]) -> list[str]:
        """The texts of ``ids``, in their order (one filtered read for the ids not cached)."""
        ids = list(ids)
        missing = sorted(set(ids) - self._cache.keys())
        if missing:
            t = self._dataset.to_table(columns=[schema.SAMPLE_ID, SOURCE, schema.TEXT, schema.POOL_ERROR],
                                       filter=pc.field(schema.SAMPLE_ID).isin(pa.array(missing, pa.string())))
            df = _keep_first(t.to_pandas())
            df = df[df[schema.POOL_ERROR].isna()]
            self._cache.update(zip(df[schema.SAMPLE_ID], df[schema.TEXT]))
            lost = [i for i in missing if i not in self._cache]
            if lost:
                raise KeyError(f"{len(lost)} ids are not usable rows of the loop's pool (first: {lost[0]!r})")
        return [self._cache[i] for i in ids]

    def keep_only(self, ids: Iterable[str]) -> None:
        """Drop cached texts other than ``ids`` (the rows every round trains on or scores)."""
        keep = set(ids)
        self._cache = {k: v for k, v in self._cache.items() if k in keep}
