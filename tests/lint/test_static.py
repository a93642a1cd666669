"""Static checks of the code (not unit tests): mypy with the settings of pyproject.toml (the
package ships ``py.typed``) and ruff's error rules over the package, tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_mypy_finds_no_errors(monkeypatch):
    from mypy import api

    monkeypatch.chdir(ROOT)
    out, err, status = api.run(["--no-incremental"])
    assert status == 0, out + err
    assert (ROOT / "molal_ray" / "py.typed").is_file()


def test_ruff_finds_no_errors():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "molal_ray", "tests", "benchmarks", "scripts"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
