"""Live counters of the annotator replicas, for ``molal-ray annotators status``.

Every replica reports, every few seconds, the batches it has in flight and the rows it has
answered to one small named actor per application; the status command reads the latest report
of each replica and the rate of the last ``WINDOW_S`` seconds. Replicas that stopped reporting
(removed by a scale-down, or dead) drop out after ``STALE_S``.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any

REPORT_EVERY_S = 2.0
WINDOW_S = 10.0
STALE_S = 10.0
NAMESPACE = "serve"


def stats_actor_name(app_name: str) -> str:
    return f"molal-annotator-stats-{app_name}"


class AnnotatorStats:
    """A Ray actor (created by the first replica that reports; ``num_cpus=0``)."""

    def __init__(self) -> None:
        self.reports: dict[str, deque[tuple[float, str, int, int]]] = defaultdict(lambda: deque(maxlen=16))

    def report(self, replica: str, deployment: str, in_flight: int, rows: int) -> None:
        self.reports[replica].append((time.time(), deployment, in_flight, rows))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per deployment: live replicas reporting, requests in flight, rows answered (since their
        start) and rows/s over the last ``WINDOW_S`` seconds."""
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        for reports in self.reports.values():
            t, dep, in_flight, rows = reports[-1]
            if now - t > STALE_S:
                continue
            d = out.setdefault(dep, {"replicas_reporting": 0, "ongoing_requests": 0, "rows": 0, "rows_per_s": 0.0})
            d["replicas_reporting"] += 1
            d["ongoing_requests"] += in_flight
            d["rows"] += rows
            old = [r for r in reports if now - r[0] <= WINDOW_S]
            if len(old) > 1 and old[-1][0] > old[0][0]:
                d["rows_per_s"] += (old[-1][3] - old[0][3]) / (old[-1][0] - old[0][0])
        return out


def stats_actor(app_name: str, create: bool = True):
    """The application's stats actor (None when it does not exist and ``create`` is False)."""
    import ray

    name = stats_actor_name(app_name)
    if not create:
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None
    return (
        ray.remote(num_cpus=0)(AnnotatorStats)
        .options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True)
        .remote()
    )
