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
        "annotators": [
            {
                "name": n,
                "engine": {"type": "replay", "path": str(TREC / "recording.parquet")},
                "resources": {"num_cpus": 0.1},
            }
            for n in TREC_ANNOTATORS
        ],
        "pool": {"path": "pool.parquet"},
        "gold": str(TREC / "gold.csv"),
        "loop": {
            "initial_gold": 20,
            "rounds": 2,
            "query_size": 20,
            "subsample": 100,
            "test_fraction": 0.25,
            "test_max": 60,
        },
        "classifier": {
            "mode": "head",
            "backbone": str(backbone),
            "epochs": 20,
            "learning_rate": 0.01,
            "cpus_per_worker": 0.5,
        },
        "ray": {"num_cpus": 2},
        "output": {"path": "run", "mode": "overwrite"},
    }
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "molal_ray.cli", "run", str(tmp_path / "loop.yaml")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loud = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if LOUD.search(line)]
    assert not loud, "\n".join(loud)
    rounds = [line for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert [r.split(":")[0] for r in rounds] == ["round 0", "round 1", "round 2"]
    *_, report_line, products_line = proc.stdout.splitlines()
    assert "report.html" in report_line and "run/model/" in products_line and "labels.parquet" in products_line
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "model" / "classifier.json").is_file()
    log = (tmp_path / "run" / "molal-ray.log").read_text()
    assert "round 2:" in log  # the details went to the log file


def _loop_yaml(tmp_path, **over) -> str:
    cfg = yaml.safe_load((TREC / "loop.yaml").read_text())
    cfg["pool"]["path"] = str(TREC / "pool.parquet")
    cfg["gold"] = str(TREC / "gold.csv")
    cfg["annotators"] = [
        {**a, "engine": {**a["engine"], "path": str(TREC / "recording.parquet")}} for a in cfg["annotators"]
    ]
    cfg["output"] = {"path": str(tmp_path / "run"), "mode": "overwrite"}
    cfg.update(over)
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "loop.yaml")


@pytest.mark.parametrize(
    "gold, expected",
    [
        ("sample_id,label\ntrec-00000,entity\ntrec-00001,colour\n", "labels not in the label set (first at line 3"),
        ("trec-00000,entity\n", "missing columns"),
        (None, "expected a CSV or Parquet file"),
    ],
)
def test_a_bad_gold_file_is_one_line_before_ray_starts(tmp_path, gold, expected):
    path = tmp_path / "gold.csv"
    if gold is not None:
        path.write_text(gold)
    proc = subprocess.run(
        [sys.executable, "-m", "molal_ray.cli", "run", _loop_yaml(tmp_path, gold=str(path))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3


def test_resume_without_a_saved_loop_says_so(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "molal_ray.cli", "run", "--resume", _loop_yaml(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "holds no saved loop" in proc.stderr and "Traceback" not in proc.stderr
