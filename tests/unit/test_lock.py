"""One job per output folder: a second refuses with who holds it; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time

import pytest

from molal_ray.lock import OutputLock, OutputLocked, lock_location
from molal_ray.storage import resolve


def test_a_second_job_refuses_with_who_holds_the_folder(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out, "label"):
        with pytest.raises(OutputLocked, match=r"is in use by `molal-ray label` \(process \d+ on .*\) since .* UTC"):
            OutputLock(out, "run").acquire()
        assert (tmp_path / "out.lock").is_file() and not out.exists()  # beside the folder, not in it
    with OutputLock(out, "run"):  # released: free again
        pass
    assert not (tmp_path / "out.lock").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    "held, heartbeat_age_s, why",
    [  # ages, not times: collection may be long before the call
        ({"host": socket.gethostname(), "pid": None}, 0, "no longer exists"),
        ({"host": "other-node", "pid": 1}, 600, "last heartbeat is 600 s old"),
    ],
)
def test_a_lock_left_by_a_dead_job_is_taken_over_with_a_warning(tmp_path, caplog, held, heartbeat_age_s, why):
    now = time.time()
    held = {
        **held,
        "pid": held["pid"] or _dead_pid(),
        "command": "label",
        "started": now - 700,
        "token": "x",
        "heartbeat": now - heartbeat_age_s,
    }
    (tmp_path / "out.lock").write_text(json.dumps(held))
    with caplog.at_level(logging.WARNING, logger="molal_ray"):
        with OutputLock(tmp_path / "out", "run"):
            assert json.loads((tmp_path / "out.lock").read_text())["command"] == "run"
    assert any("taking over" in r.message and why in r.message for r in caplog.records)


def test_a_live_lock_elsewhere_is_respected_and_the_heartbeat_keeps_it_fresh(tmp_path):
    (tmp_path / "out.lock").write_text(
        json.dumps(
            {
                "host": "other-node",
                "pid": 1,
                "command": "run",
                "token": "x",
                "started": time.time(),
                "heartbeat": time.time(),
            }
        )
    )
    with pytest.raises(OutputLocked, match="other-node"):
        OutputLock(tmp_path / "out", "label").acquire()
    (tmp_path / "out.lock").unlink()
    lock = OutputLock(tmp_path / "b", "label", heartbeat_s=0.1).acquire()
    first = json.loads((tmp_path / "b.lock").read_text())["heartbeat"]
    time.sleep(0.5)
    assert json.loads((tmp_path / "b.lock").read_text())["heartbeat"] > first
    lock.release()


def test_lock_locations_of_paths_and_uris(tmp_path):
    assert lock_location(resolve(tmp_path / "run")).path == str(tmp_path / "run.lock")


def test_label_and_run_refuse_a_folder_in_use_before_ray_starts(tmp_path, ray_must_not_start):
    import yaml
    from click.testing import CliRunner

    from molal_ray.cli import main
    from tests.conftest import TREC

    cfg = yaml.safe_load((TREC / "label.yaml").read_text())
    cfg["pool"]["path"] = str(TREC / "pool.parquet")
    for a in cfg["annotators"]:
        a["engine"]["path"] = str(TREC / "recording.parquet")
    cfg["output"]["path"] = str(tmp_path / "out")
    (tmp_path / "label.yaml").write_text(yaml.safe_dump(cfg))
    with OutputLock(tmp_path / "out", "label"):
        result = CliRunner().invoke(main, ["label", str(tmp_path / "label.yaml")])
    assert result.exit_code == 2 and "is in use by `molal-ray label`" in result.output

    from molal_ray.config.loop import LoopJobConfig

    loop = LoopJobConfig.from_file(TREC / "loop.yaml").model_dump(mode="json")
    loop["output"]["path"] = str(tmp_path / "loop-out")
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(loop))
    with OutputLock(tmp_path / "loop-out", "label"):
        result = CliRunner().invoke(main, ["run", str(tmp_path / "loop.yaml")])
    assert result.exit_code == 2 and "is in use by `molal-ray label`" in result.output
