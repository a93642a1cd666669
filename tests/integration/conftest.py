"""Integration tests run a local Ray (started once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def ray_local():
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Workers import test helpers (fake engines) from the repository.
    from molal_ray.runtime import init_local

    init_local(num_cpus=2, include_dashboard=False, log_to_driver=False,  # listening on 127.0.0.1 only
               runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Endpoint:
    """A running S3-compatible server on 127.0.0.1 (moto's standalone server)."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"127.0.0.1:{port}"

    def uri(self, bucket: str, path: str = "") -> str:
        """``s3://bucket/path`` with the endpoint in the URI's options (pyarrow reads them)."""
        return f"s3://{bucket}/{path}?endpoint_override={self.endpoint}&scheme=http"

    def bucket(self, name: str) -> str:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True)
        fs.create_dir(name)
        return name

    def upload(self, local: Path, bucket: str, path: str) -> str:
        from molal_ray.storage import resolve

        resolve(self.uri(bucket, path)).write_bytes(local.read_bytes())
        return self.uri(bucket, path)


@pytest.fixture(scope="session")
def s3():
    """moto_server on a free port of 127.0.0.1, stopped by its own process id at the end."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    yield S3Endpoint(port)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
