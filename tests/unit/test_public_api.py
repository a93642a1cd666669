"""The public front (molal_ray.label, read_annotations, aggregate, run): configs from objects or
YAML paths, tables and gold from objects or files; Ray-free parts here (label and run end to end
in tests/integration)."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

import molal_ray
from molal_ray.exceptions import AggregationError, ConfigError
from molal_ray.testing.synthetic import SYNTHETIC_LABELS, synthetic_table
from tests.conftest import TREC


def test_the_package_exports_its_front_and_imports_nothing_heavy():
    import subprocess
    import sys

    assert set(molal_ray.__all__) >= {"label", "read_annotations", "aggregate", "run"}
    code = "import sys, molal_ray; print(sorted(m for m in ('ray', 'torch', 'pyarrow', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_fronts_functions_stay_functions_once_their_modules_are_imported():
    """A subpackage named like a function of the front would replace it on ``molal_ray`` the first
    time it is imported (``molal_ray.export`` was the export subpackage after a load_classifier)."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, molal_ray\n"
        "for m in pkgutil.walk_packages(molal_ray.__path__, 'molal_ray.'):\n"
        "    if not m.name.startswith('molal_ray.testing.vllm'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [n for n in molal_ray.__all__ if n != '__version__' and not callable(getattr(molal_ray, n))]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_aggregate_from_a_table_or_a_file_and_gold_from_a_frame_or_a_file(tmp_path):
    table, truth = synthetic_table(400, seed=2)
    pq.write_table(table, tmp_path / "ann.parquet")
    gold = pd.DataFrame(
        {"sample_id": [f"s{i:08d}" for i in range(40)], "label": [SYNTHETIC_LABELS[k].upper() for k in truth[:40]]}
    )  # any case
    gold.to_csv(tmp_path / "gold.csv", index=False)
    a = molal_ray.aggregate(table, gold, SYNTHETIC_LABELS, validate=False)
    b = molal_ray.aggregate(tmp_path / "ann.parquet", tmp_path / "gold.csv", SYNTHETIC_LABELS, validate=False)
    assert a.table.equals(b.table) and a.table.num_rows == 400
    assert molal_ray.read_annotations(tmp_path / "ann.parquet").num_rows == table.num_rows
    with pytest.raises(AggregationError, match="not in the label set"):
        molal_ray.aggregate(table, gold.assign(label="zebra"), SYNTHETIC_LABELS, validate=False)


def test_configs_from_objects_or_yaml_paths(tmp_path):
    cfg = molal_ray.loop_config(TREC / "loop.yaml")
    assert molal_ray.loop_config(cfg) is cfg and cfg.task.labels[0] == "abbreviation"
    assert molal_ray.label_config(TREC / "label.yaml").annotators
    (tmp_path / "bad.yaml").write_text("task: {labels: [a]}\nunknown: 1\n")
    with pytest.raises(ConfigError):
        molal_ray.label_config(tmp_path / "bad.yaml")
