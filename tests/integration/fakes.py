"""Engines used by integration tests (importable by Ray workers through PYTHONPATH)."""

from __future__ import annotations

import os
from pathlib import Path

from molal_ray.engines.replay import ReplayEngine


class DyingOnceReplayEngine(ReplayEngine):
    """A replay engine whose replica process dies (hard exit) on its first batch of a test run.

    The marker file records the death, so the replacement replica answers normally: the
    pipeline must retry the batch and lose no row.
    """

    async def annotate(self, sample_ids, texts):  # type: ignore[no-untyped-def]
        marker = Path(os.environ["MOLAL_TEST_DIE_DIR"]) / f"died-{self.name}"
        if self.name == os.environ.get("MOLAL_TEST_DIE_ANNOTATOR") and not marker.exists():
            marker.write_text("x")
            os._exit(1)
        return await super().annotate(sample_ids, texts)


class SlowEmbedBuckets:
    """The embedding stage's UDF, 3 s slower per bucket (a slow encoder on a large bucket)."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        from molal_ray.pipeline.embeddings import EmbedBuckets

        self.inner = EmbedBuckets(*args, **kwargs)

    def __call__(self, batch):  # type: ignore[no-untyped-def]
        import time

        time.sleep(3.0)
        return self.inner(batch)
