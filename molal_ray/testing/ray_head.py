"""A Ray head of its own for tests and benchmarks: the README's cluster commands against it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from molal_ray.testing.vllm_server import free_port

HEAD_MARK = "MOLAL_TEST_RAY_HEAD"


class RayHead:
    """`ray start --head` in a subprocess, with ports and a temp dir of its own, token
    authentication on (its token under ``tmp/home/.ray``), the dashboard on 127.0.0.1, stopped by
    the process ids of its own processes (never a machine-wide `ray stop`). For tests and
    benchmarks.

    Its node address is given as 127.0.0.1, but `ray start` (Ray 2.60) turns a loopback node
    address into the machine's routable one, and the GCS, the raylet and the agents listen there:
    a head kept on loopback would need every driver that joins it (``ray job submit``'s among
    them) to be told its node address, which Ray offers no setting for."""

    def __init__(self, tmp: Path, cwd: Path | None = None, num_cpus: int = 2) -> None:
        # Ray's socket paths must stay under 108 bytes: a short temp dir of its own.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="molal-ray-"))
        self.mark = uuid.uuid4().hex
        self.seen: dict[int, psutil.Process] = {}  # its processes found so far (see processes())
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
            HEAD_MARK: self.mark,  # inherited by every process the head starts
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
                self.processes()  # the agents are known while the raylet is their parent
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

    def processes(self) -> list[psutil.Process]:
        """This head's processes: those started with its temp dir or its environment, their
        children, and those found so before that still run. Not by command line alone: the agents
        rename themselves (``ray::DashboardAgent``, which also hides their environment) and the Ray
        client server names neither, so they outlived a stop that looked only there; once their
        raylet is gone nothing names them, hence the ones seen before."""
        mine = str(self.temp_dir)
        for p in psutil.process_iter(["cmdline", "environ"]):
            try:
                env = p.info["environ"] or {}
                if env.get(HEAD_MARK) == self.mark or any(mine in part for part in (p.info["cmdline"] or [])):
                    for q in (p, *p.children(recursive=True)):
                        self.seen[q.pid] = q
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.seen.pop(os.getpid(), None)
        self.seen = {pid: p for pid, p in self.seen.items() if p.is_running()}  # is_running: not a reused pid
        return list(self.seen.values())

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        # The GCS and the autoscaler's monitor outwait a SIGTERM by more than 20 s; nothing of a
        # test head needs a graceful end.
        _, alive = psutil.wait_procs(procs, timeout=3)
        for p in alive:
            p.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
