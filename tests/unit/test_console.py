"""The quiet console: Ray's forwarded lines are told apart from ours and routed to the log."""

from __future__ import annotations

import io
import subprocess
import sys

from molal_ray.console import forwarded_lines_to, is_forwarded


def test_forwarded_lines_are_recognised():
    assert is_forwarded("(raylet) WARNING: 12 PYTHON worker processes have been started on node: ab")
    assert is_forwarded("\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes")
    assert is_forwarded("(MapWorker(MapBatches(EmbedBuckets)) pid=5139) loading")
    assert is_forwarded("(ServeReplica:annotators:gemma pid=77, ip=10.0.0.2) INFO started")
    assert is_forwarded("(pid=123) hello")
    assert not is_forwarded("round 3: labelled 200  test acc 0.784")
    assert not is_forwarded("(a note in brackets) from us")
    assert not is_forwarded("error: pool.path: no such file")


def test_router_sends_forwarded_lines_to_the_sink_and_keeps_ours(monkeypatch):
    out, err, sink = io.StringIO(), io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with forwarded_lines_to(sink):
        print("round 1: fine")
        print("\x1b[33m(raylet)\x1b[0m WARNING: 12 PYTHON worker processes", file=sys.stderr)
        sys.stdout.write("partial ")
        sys.stdout.write("line\n(pid=9) worker output\n")
    assert out.getvalue() == "round 1: fine\npartial line\n"
    assert err.getvalue() == ""
    assert sink.getvalue() == "(raylet) WARNING: 12 PYTHON worker processes\n(pid=9) worker output\n"
    assert sys.stdout is out and sys.stderr is err  # restored
    with forwarded_lines_to(sink, enabled=False):  # -v: everything shows
        print("(raylet) shown")
    assert out.getvalue().endswith("(raylet) shown\n")


def test_ray_loggers_quieted_after_ray_data_and_serve_set_theirs():
    # In a fresh process: Serve is not imported for the quiet (a job without annotators does not
    # need it), and when our Serve code imports it, which sets its logger to INFO, it is quiet again.
    code = """
import logging, sys
from molal_ray.console import quiet_ray_loggers
quiet_ray_loggers()
assert "ray.serve" not in sys.modules
for name in ("ray", "ray.data", "ray.serve", "ray.train"):
    assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
assert logging.getLogger("ray.data._internal.progress").getEffectiveLevel() >= logging.ERROR
import ray.serve
assert logging.getLogger("ray.serve").level == logging.INFO  # what Serve's import sets
import molal_ray.serve.control
assert logging.getLogger("ray.serve").level == logging.WARNING
quiet_ray_loggers(logging.INFO)
assert logging.getLogger("ray.data").level == logging.INFO
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_after_a_quiet_command_rays_late_lines_are_dropped(monkeypatch):
    """Ray prints its deduplicated warnings when it shuts down at exit, after the command's
    routing has ended: those lines stay off the console too."""
    import io
    import sys

    from molal_ray.console import drop_forwarded_lines, forwarded_lines_to

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    drop_forwarded_lines()
    sink = io.StringIO()
    with forwarded_lines_to(sink):
        print("\x1b[33m(raylet)\x1b[0m WARNING: during the run", file=sys.stderr)
    print("\x1b[33m(raylet)\x1b[0m WARNING: 13 PYTHON worker processes [repeated 2x across cluster]", file=sys.stderr)
    print("report: run/report.html")
    sys.stdout.flush()
    sys.stderr.flush()
    assert "during the run" in sink.getvalue()
    assert err.getvalue() == "" and out.getvalue() == "report: run/report.html\n"


NATIVE_LINE = (
    "[2026-12-03 18:14:48,452 E 32071 32071] core_worker.cc:2465: Actor with class name: 'MapWorker' "
    "has constructor arguments in the object store and max_restarts > 0."
)


def test_native_log_lines_are_recognised():
    from molal_ray.console import is_native_log

    assert is_native_log(NATIVE_LINE)
    assert is_native_log("[2026-12-03 18:14:48,452 W 1 2] gcs_client.cc:12: lost the GCS")
    assert not is_native_log("[2026-12-03 18:14:48,452 F 1 2] core_worker.cc:9: Check failed")  # fatal stays
    assert not is_native_log("[1/3] round 1")
    assert not is_native_log("error: pool.path: no such file")


def test_native_log_lines_leave_the_terminal_and_go_to_the_runs_log(tmp_path):
    """What native code writes to file descriptor 2 passes on, except Ray's C++ log lines, which
    go to the sink of forwarded_lines_to (else are dropped); Python's stderr is untouched. In a
    process of its own: the file descriptors are the process's."""
    import subprocess
    import textwrap

    from tests.conftest import ROOT

    script = textwrap.dedent(
        f"""
        import os, sys
        from molal_ray.console import drop_native_log_lines, forwarded_lines_to
        drop_native_log_lines()
        drop_native_log_lines()  # once is enough
        os.write(2, {NATIVE_LINE!r}.encode() + b"\\n")  # no sink yet: dropped
        os.write(2, b"a C library's own line\\n")
        print("ours, through sys.stderr", file=sys.stderr)
        import time; time.sleep(0.5)  # read (and dropped) before the sink is set
        with open({str(tmp_path / "run.log")!r}, "w") as log, forwarded_lines_to(log):
            os.write(2, {NATIVE_LINE.replace("E 32071", "W 32071")!r}.encode() + b"\\n")
            os.write(2, b"partial ")
            os.write(2, b"native line\\n")
            import time; time.sleep(0.5)  # the pump thread reads it while the log is open
        sys.stderr.flush()
        import time; time.sleep(0.3)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert "a C library's own line" in lines and "ours, through sys.stderr" in lines
    assert "partial native line" in lines
    assert not any("core_worker.cc" in line for line in lines), run.stderr
    assert (tmp_path / "run.log").read_text().splitlines() == [NATIVE_LINE.replace("E 32071", "W 32071")]
