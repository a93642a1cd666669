"""Memory of a benchmark's driver and of every Ray process, sampled in a thread."""

from __future__ import annotations

import threading

import psutil


def _is_ray(p: psutil.Process) -> bool:
    cmd = " ".join(p.info["cmdline"] or [])
    return (
        "ray" in (p.info["name"] or "")
        or "ray::" in cmd
        or "raylet" in cmd
        or "gcs_server" in cmd
        or "ray/_private" in cmd
        or "ray/dashboard" in cmd
    )


class MemorySampler(threading.Thread):
    """Peak memory of the driver (RSS) and of the driver plus every Ray process together: the sum
    of their PSS (each shared page, such as the object store's, counted once across processes)
    and, for comparison, the sum of their RSS (shared pages counted in every process that maps
    them)."""

    def __init__(self, every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.peak_pss = self.peak_rss = self.driver_peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        me = psutil.Process().pid
        while not self.stop.is_set():
            pss = rss = 0
            for p in psutil.process_iter(["name", "cmdline"]):
                try:
                    if p.pid == me or _is_ray(p):
                        m = p.memory_full_info()
                        pss += m.pss
                        rss += m.rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
                    continue
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.driver_peak = max(self.driver_peak, psutil.Process().memory_info().rss)
            self.stop.wait(self.every_s)
