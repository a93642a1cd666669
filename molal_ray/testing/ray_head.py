"""A Ray head of its own for tests and benchmarks: the README's cluster commands against it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from molal_ray.testing.vllm_server import free_port


class RayHead:
    """`ray start --head` in a subprocess, every server on 127.0.0.1 with ports of its own, token
    authentication on (its token under ``tmp/home/.ray``), stopped by the process ids of its own
    processes (never a machine-wide `ray stop`). For tests and benchmarks."""

    def __init__(self, tmp: Path, cwd: Path | None = None, num_cpus: int = 2) -> None:
        # Ray's socket paths must stay under 108 bytes: a short temp dir of its own.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="molal-ray-"))
        self.home = tmp / "home"  # the head's token goes to HOME/.ray; jobs and clients read it there
        self.home.mkdir()
        self.dashboard = free_port()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ["PATH"],
            "HOME": str(self.home),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{self.dashboard}",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.cwd = cwd or Path.cwd()  # where `ray job submit --working-dir .` and molal-ray run
        self.port = free_port()
        ports = {
            "--port": self.port,
            "--dashboard-port": self.dashboard,
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--ray-client-server-port": free_port(),
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
        }
        token = subprocess.run(
            ["ray", "get-auth-token", "--generate"], env=self.env, capture_output=True, text=True, timeout=60
        )
        assert token.returncode == 0, token.stderr[-2000:]
        self.cmd = [
            "ray",
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--dashboard-host",
            "127.0.0.1",
            "--num-cpus",
            str(num_cpus),
            "--disable-usage-stats",
            *[x for k, v in ports.items() for x in (k, str(v))],
        ]
        self.address = f"127.0.0.1:{self.port}"

    def start(self, attempts: int = 2) -> None:
        """``ray start``; on a loaded machine the head's start-up can time out (the GCS does not
        answer in time): its processes are stopped and it is started once more."""
        for _attempt in range(1, attempts + 1):
            out = subprocess.run(
                [*self.cmd, "--temp-dir", str(self.temp_dir)], env=self.env, capture_output=True, text=True, timeout=180
            )
            if out.returncode == 0:
                return
            self.stop()
            self.temp_dir = Path(tempfile.mkdtemp(prefix="molal-ray-"))
        raise AssertionError(f"ray start failed {attempts} times: {out.stderr[-3000:]}")

    def ray(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(
            ["ray", *args], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-3000:])
        return out

    def molal(self, *args: str) -> subprocess.CompletedProcess:
        env = {**self.env, "RAY_ADDRESS": self.address}
        out = subprocess.run(
            [sys.executable, "-m", "molal_ray.cli", *args],
            env=env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-3000:])
        return out

    def submit(self, job_id: str, *entry: str) -> None:
        self.ray("job", "submit", "--working-dir", ".", "--submission-id", job_id, "--no-wait", "--", *entry)

    def status(self, job_id: str) -> str:
        return self.ray("job", "status", job_id).stdout

    def wait(self, job_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status(job_id).lower()  # "Job 'x' succeeded", "... failed", "... was stopped"
            for word, state in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("stopped", "STOPPED")):
                if f"{job_id}' {word}" in s or f"{job_id}' was {word}" in s:
                    return state
            time.sleep(2)
        raise TimeoutError(job_id)

    def logs(self, job_id: str) -> str:
        return self.ray("job", "logs", job_id, check=False).stdout

    def stop(self) -> None:
        mine = str(self.temp_dir)
        procs = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(mine in part for part in (p.info["cmdline"] or [])):
                    procs.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            p.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
