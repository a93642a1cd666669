"""`molal-ray run` as a user runs it: a healthy run keeps the console quiet (no line at WARNING
or above, no C++ error lines), prints a line per round and where the report is."""

from __future__ import annotations

import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import TREC, TREC_ANNOTATORS, TREC_LABELS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LOUD = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b|Warning:|^\[[^\]]*\b[EWF] \d+ \d+\]|^[EWF]\d{4} ")


def test_a_healthy_run_is_quiet(tmp_path):
    from molal_ray.testing.tiny_models import build_tiny_bert

    pool = pq.read_table(TREC / "pool.parquet").slice(0, 300)
    pq.write_table(pool, tmp_path / "pool.parquet")
    backbone = build_tiny_bert(tmp_path / "bert", pool.column("text").to_pylist())
    cfg = {
        "task": {"name": "tiny", "labels": TREC_LABELS},
        "annotators": [{"name": n, "engine": {"type": "replay", "path": str(TREC / "recording.parquet")},
                        "resources": {"num_cpus": 0.1}} for n in TREC_ANNOTATORS],
        "pool": {"path": "pool.parquet"},
        "gold": str(TREC / "gold.csv"),
        "loop": {"initial_gold": 20, "rounds": 2, "query_size": 20, "subsample": 100, "test_fraction": 0.25,
                 "test_max": 60},
        "classifier": {"mode": "head", "backbone": str(backbone), "epochs": 20, "learning_rate": 0.01,
                       "cpus_per_worker": 0.5},
        "ray": {"num_cpus": 2},
        "output": {"path": "run", "mode": "overwrite"},
    }
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "molal_ray.cli", "run", str(tmp_path / "loop.yaml")],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loud = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if LOUD.search(line)]
    assert not loud, "\n".join(loud)
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert [r.split(":")[0] for r in rounds] == ["round 0", "round 1", "round 2"]
    assert "report.html" in proc.stdout.splitlines()[-1]
    assert (tmp_path / "run" / "report.html").is_file()
    log = (tmp_path / "run" / "molal-ray.log").read_text()
    assert "round 2:" in log  # the details went to the log file
