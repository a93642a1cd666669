"""What makes two annotators answer alike: the task (labels, prompt) and the engine settings.

A job that finds an annotator application already running compares each annotator's
fingerprint with its own and uses the running one only when they are equal; replica counts and
other resources are not part of it (scaling changes how fast, not what is answered). An
annotation table keeps its annotators' fingerprints in its manifest (``pipeline/output.py``):
a job that resumes it with an annotator of the same name but other settings is refused, and
``predict --escalate`` reuses a loop's answers only from annotators with the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from molal_ray.config import AnnotatorConfig, TaskConfig


def fingerprint(annotator: AnnotatorConfig, task: TaskConfig) -> dict[str, Any]:
    return {
        "task": {
            "labels": task.labels,
            "prompt_template": task.prompt_template,
            "use_chat_template": task.use_chat_template,
        },
        "engine": annotator.engine.model_dump(mode="json"),
        "sampling": annotator.sampling.model_dump(mode="json"),
    }


def fingerprints(annotators: list[AnnotatorConfig], task: TaskConfig) -> dict[str, dict[str, Any]]:
    """Each annotator's fingerprint, by name (what an annotation table's manifest keeps)."""
    return {a.name: fingerprint(a, task) for a in annotators}


def fingerprint_key(fp: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(fp, sort_keys=True).encode(), digest_size=8).hexdigest()


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(job: dict[str, Any], running: dict[str, Any], theirs: str = "running") -> list[str]:
    """Readable differences: ``sampling.temperature: 0.7 in the job, 0.5 running`` (``theirs``
    says where the other fingerprint is from)."""
    a, b = _flat(job), _flat(running)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            va, vb = (repr(x)[:80] for x in (a.get(key), b.get(key)))
            out.append(f"{key}: {va} in the job, {vb} {theirs}")
    return out
