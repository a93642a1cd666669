"""A ``vllm serve`` (vLLM's OpenAI-compatible server) on 127.0.0.1, started and stopped by its
own process group, for tests and benchmarks of the ``openai`` engine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    url: str  # the API root, http://127.0.0.1:PORT/v1
    proc: subprocess.Popen
    log: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@contextlib.contextmanager
def vllm_server(
    model: str,
    name: str,
    *,
    api_key: str | None = None,
    max_model_len: int = 2048,
    start_timeout_s: float = 420,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Served]:
    """``vllm serve MODEL`` as ``name`` on a free port of 127.0.0.1 (CPU build: float32, eager, and
    chunked prefill off: with it, a request carrying its own seed stops the CPU build's engine
    when a prompt is split across steps, as ``per_request_seed`` requests do)."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w", prefix="vllm-serve-", suffix=".log", delete=False)
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        "--enforce-eager",
        "--max-logprobs",
        "50",
        "--no-enable-chunked-prefill",
        *(["--api-key", api_key] if api_key else []),
        *extra_args,
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    served = Served(f"http://127.0.0.1:{port}/v1", proc, log.name)
    try:
        deadline = time.monotonic() + start_timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        while True:
            try:
                urllib.request.urlopen(
                    urllib.request.Request(served.url + "/models", headers=headers), timeout=5
                ).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"vllm serve did not start (exit code {proc.poll()}); its log: {log.name}"
                    ) from None
                time.sleep(2)
        yield served
    finally:
        served.stop()
        log.close()
