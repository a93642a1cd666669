"""Static checks of the code (not unit tests): mypy with the settings of pyproject.toml (the
package ships ``py.typed``), ruff's rules (pyproject.toml) and its formatting over the package,
tests, benchmarks and scripts."""

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


FOLDERS = ["molal_ray", "tests", "benchmarks", "scripts"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check", "--diff"]], ids=["rules", "format"])
def test_ruff_finds_nothing(command):
    done = subprocess.run([sys.executable, "-m", "ruff", *command, *FOLDERS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr
