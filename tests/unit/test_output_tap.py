"""The root cause of a vLLM engine that fails to start: read from what its processes wrote to
standard error (the parent only says "see root cause above")."""

from __future__ import annotations

import os
import subprocess
import sys

from molal_ray.engines.output_tap import OutputTap, root_cause

# What vLLM's CPU build wrote when its worker could not start (2 cores, 23.5 GiB, 4.5 GiB held by
# another process), shortened: the worker's error, then the engine core's and the parent's wrappers.
VLLM_START_FAILURE = """\
(VllmWorker-0 pid=14878) ERROR 12-06 20:09:25 [multiproc_executor.py:953] WorkerProc failed to start.
(VllmWorker-0 pid=14878) ERROR 12-06 20:09:25 [multiproc_executor.py:953] Traceback (most recent call last):
(VllmWorker-0 pid=14878) ERROR 12-06 20:09:25 [multiproc_executor.py:953]     raise ValueError(
(VllmWorker-0 pid=14878) ERROR 12-06 20:09:25 [multiproc_executor.py:953] ValueError: Available memory on \
node 0 (17.31/23.54 GiB) on startup is less than desired CPU memory utilization (0.9, 21.19 GiB).
(EngineCore pid=14864) ERROR 12-06 20:09:27 [core.py:1510] EngineCore failed to start.
(EngineCore pid=14864) ERROR 12-06 20:09:27 [core.py:1510] Exception: WorkerProc initialization failed due \
to an exception in a background process. See stack trace for root cause.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_the_root_cause_is_the_first_exception_that_wraps_no_other():
    cause = root_cause(VLLM_START_FAILURE.splitlines())
    assert cause == (
        "ValueError: Available memory on node 0 (17.31/23.54 GiB) on startup is less than desired CPU memory "
        "utilization (0.9, 21.19 GiB)."
    )
    wrappers_only = [line for line in VLLM_START_FAILURE.splitlines() if "ValueError" not in line]
    assert root_cause(wrappers_only) is None
    assert root_cause(["INFO loading", "Warning: NUMA binding: Using MEMBIND policy"]) is None


def test_the_tap_keeps_what_a_child_process_writes_and_still_passes_it_on(capfd):
    with OutputTap() as tap:
        subprocess.run(
            [sys.executable, "-c", "import sys; print('child line', file=sys.stderr); raise KeyError('lost')"],
            check=False,
        )
        os.write(2, b"parent line\n")  # what a library's C code or logging handler on fd 2 writes
    lines = tap.lines()
    assert "child line" in lines and "parent line" in lines
    assert root_cause(lines) == "KeyError: 'lost'"
    os.write(2, b"after the tap\n")
    err = capfd.readouterr().err
    assert "child line" in err and "parent line" in err and "after the tap" in err  # nothing swallowed
    assert "after the tap" not in tap.lines(settle_s=0.05)  # the block's lines only
