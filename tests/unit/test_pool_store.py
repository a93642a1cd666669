"""The loop's on-disk pool: texts by id, repeated ids resolved the same way as at build time."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from molal_ray.loop.pool_store import PoolStore, _keep_first


def _write(folder, rows):
    folder.mkdir()
    half = len(rows) // 2
    for k, part in enumerate((rows[:half], rows[half:])):  # two files, like Ray Data's output
        ids, texts, errors, sources = zip(*part)
        pq.write_table(pa.table({"sample_id": list(ids), "text": list(texts), "pool_error": list(errors),
                                 "_source": list(sources)}), folder / f"part-{k}.parquet")


ROWS = [("b", "text of b", None, "f:1"), ("a", "text of a", None, "f:0"), ("c", "", "empty_text: ...", "f:2"),
        ("a", "second copy of a", None, "f:3"), ("d", "text of d", None, "f:4"), ("b", "x", "invalid_utf8", "f:5")]


def test_repeated_ids_keep_the_first_unflagged_copy():
    import pandas as pd

    df = _keep_first(pd.DataFrame(ROWS, columns=["sample_id", "text", "pool_error", "_source"]))
    assert list(df["sample_id"]) == ["a", "a", "b", "b", "c", "d"]
    kept = df[df["pool_error"].isna()]
    assert list(kept["text"]) == ["text of a", "text of b", "text of d"]
    assert df.loc[1, "pool_error"].startswith("duplicate_id") and df.loc[3, "pool_error"] == "invalid_utf8"


def test_texts_come_back_in_the_asked_order_and_unusable_ids_are_refused(tmp_path):
    _write(tmp_path / "pool", ROWS)
    store = PoolStore(tmp_path / "pool")
    assert store.texts(["d", "a", "b", "a"]) == ["text of d", "text of a", "text of b", "text of a"]
    with pytest.raises(KeyError, match="not usable rows"):
        store.texts(["a", "c"])  # c is flagged
    with pytest.raises(KeyError, match="'zz'"):
        store.texts(["zz"])
    store.keep_only(["a"])
    assert set(store._cache) == {"a"}
    assert store.texts(["b"]) == ["text of b"]  # read again after the cache was trimmed
