"""Sample ids: one stable hash, shared by the pool's buckets, the table's index and the replay engine."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


def hash_ids(ids: Iterable[str]) -> np.ndarray:
    """Stable 64-bit hashes of sample ids (same value in every process and run)."""
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(arr, categorize=False)
