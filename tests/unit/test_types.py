"""The package type-checks (the package ships ``py.typed``): mypy with the settings of pyproject.toml."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_mypy_finds_no_errors(monkeypatch):
    from mypy import api

    monkeypatch.chdir(ROOT)
    out, err, status = api.run(["--no-incremental"])
    assert status == 0, out + err
    assert (ROOT / "molal_ray" / "py.typed").is_file()
