"""Integration tests run a local Ray (started once per session)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Workers import test helpers (fake engines) from the repository.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()
