"""The GPU check script runs (here on the CPU, with a tiny shape) with torch and transformers
only: no pydantic, no Ray, as on the machine that has the accelerator."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_check_runs_without_pydantic_or_ray():
    code = (
        "import sys, runpy; sys.argv = ['gpu_engines.py', '--shape', 'tiny', '--device', 'cpu', '--n-ref', '2', "
        "'--n', '16', '--batch', '8', '--prompt-len', '40', '--predict-n', '64', '--predict-batch', '16']; "
        "runpy.run_path('benchmarks/gpu_engines.py', run_name='__main__'); "
        "bad = [m for m in ('pydantic', 'ray', 'vllm') if m in sys.modules]; "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(a) reference loop" in out.stdout and "(b) hf engine scoring, batch 8" in out.stdout
    assert "(c) predict: exported classifier, batch 16" in out.stdout
