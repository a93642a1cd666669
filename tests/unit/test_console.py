"""The quiet console: Ray's forwarded lines are told apart from ours and routed to the log."""

from __future__ import annotations

import io
import logging
import sys

from molal_ray.console import forwarded_lines_to, is_forwarded, quiet_ray_loggers


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
    quiet_ray_loggers()
    for name in ("ray", "ray.data", "ray.serve", "ray.train"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING
    assert logging.getLogger("ray.data._internal.progress").getEffectiveLevel() >= logging.ERROR
    quiet_ray_loggers(logging.INFO)
    assert logging.getLogger("ray.data").level == logging.INFO


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
