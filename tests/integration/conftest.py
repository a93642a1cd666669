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

    init_local(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,  # listening on 127.0.0.1 only
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
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


class MotoServer(S3Endpoint):
    """moto_server (an S3-compatible server, data in memory) on a free port of 127.0.0.1,
    started here and stopped by its own process id."""

    def __init__(self) -> None:
        import socket
        import subprocess
        import sys
        import time

        super().__init__(free_port())
        self.port = port = int(self.endpoint.rsplit(":", 1)[1])
        server = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


class TcpGate:
    """A TCP forwarder on a free port of 127.0.0.1 in front of a local server: :meth:`cut` stops
    listening and drops every connection through it (the endpoint is unreachable, the server and
    its data live on), :meth:`restore` listens on the same port again."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list = []
        self._open = threading.Event()
        self.restore()

    def restore(self) -> None:
        import socket
        import threading

        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._open.set()
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while self._open.is_set():
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
        listener.close()

    @staticmethod
    def _pump(src, dst) -> None:
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        import socket
        import time

        self._open.clear()
        time.sleep(0.5)  # the accept loop closes its listener
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


@pytest.fixture(scope="session")
def s3():
    """One S3-compatible server for the session."""
    server = MotoServer()
    yield server
    server.stop()


LABEL_STUDIO_VENV = ROOT / os.environ.get("MOLAL_LABEL_STUDIO_VENV", ".venv-label-studio")


class LabelStudioServer:
    """A real Label Studio on a free port of 127.0.0.1, with its own data folder and a user the
    test makes (a legacy token for the "reviewer"; a personal access token for molal-ray, as a
    user of a recent Label Studio would have). Started and stopped by its own process id."""

    LEGACY_TOKEN = "molal-ray-test-reviewer-token-0123456789"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.log = data_dir / "server.log"
        self.access_token: str | None = None

    def start(self, timeout_s: float = 180) -> None:
        import subprocess
        import time

        import httpx

        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir), "DJANGO_DEBUG": "0"}
        cmd = [
            str(LABEL_STUDIO_VENV / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--data-dir",
            str(self.data_dir),
            "--internal-host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--username",
            "reviewer@example.org",
            "--password",
            "reviewer-password",
            "--user-token",
            self.LEGACY_TOKEN,
            "--enable-legacy-api-token",
        ]
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=self.data_dir,
            start_new_session=True,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Label Studio did not start; its log: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)
        if self.access_token is None:  # a personal access token, made through the API
            self.access_token = self.api("POST", "/api/token/").json()["token"]

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def api(self, method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
        """A request as the reviewer (the legacy token)."""
        import httpx

        r = httpx.request(
            method, self.url + path, headers={"Authorization": f"Token {self.LEGACY_TOKEN}"}, timeout=30, **kwargs
        )
        r.raise_for_status()
        return r

    def tasks(self, project_id: int) -> list[dict]:
        got = self.api("GET", "/api/tasks", params={"project": project_id, "page_size": 1000, "fields": "all"}).json()
        return got["tasks"]

    def project_id(self, title: str) -> int | None:
        found = [
            p
            for p in self.api("GET", "/api/projects", params={"title": title}).json()["results"]
            if p["title"] == title
        ]
        return found[0]["id"] if found else None

    def annotate(self, task_id: int, label: str | None) -> None:
        """A reviewer's annotation: choose ``label``, or skip the task (None)."""
        result = (
            []
            if label is None
            else [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
        )
        self.api("POST", f"/api/tasks/{task_id}/annotations", json={"result": result, "was_cancelled": label is None})


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """One Label Studio server for the session (tests use projects of their own)."""
    if not (LABEL_STUDIO_VENV / "bin" / "label-studio").exists():
        pytest.skip(f"Label Studio is not installed in {LABEL_STUDIO_VENV} (bash scripts/setup.sh --test installs it)")
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"))
    server.start()
    yield server
    server.stop()
