"""Generated bad configs for every config kind: a clear error (exit 2, a few lines) or a valid
config, never a traceback. Seeds are fixed: a failure names its case and repeats."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from molal_ray.cli import main
from tests.conftest import ROOT, TREC

BASES = {
    "label": TREC / "label.yaml",
    "run": TREC / "loop.yaml",
    "serve-app": ROOT / "serve_configs" / "annotators-cpu.yaml",
}
CASES_PER_KIND = 60
ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    1e308,
    float("nan"),
    "",
    "x" * 300,
    "-1",
    "1e9",
    [],
    {},
    [1, "a"],
    {"a": 1},
    "../../../../etc/passwd",
    "/dev/null",
    "s3://",
    "package:",
    "package:no_such_pkg/x",
]


def _absolute(data: Any, base: Path) -> Any:
    """Relative file names of the example made absolute, so a mutated copy can live anywhere."""
    if isinstance(data, dict):
        return {k: _absolute(v, base) for k, v in data.items()}
    if isinstance(data, list):
        return [_absolute(v, base) for v in data]
    if (
        isinstance(data, str)
        and 0 < len(data) < 200
        and "\n" not in data
        and not data.startswith(("/", "package:"))
        and (base / data).exists()
    ):
        return str((base / data).resolve())
    return data


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(data: dict, rng: random.Random) -> dict:
    data = copy.deepcopy(data)
    for _ in range(rng.choice([1, 1, 2, 3])):
        path = rng.choice(_paths(data))
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = rng.choice(["delete", "value", "value", "unknown", "wrap"])
        if op == "delete":
            del parent[key]
        elif op == "value":
            parent[key] = rng.choice(ODD_VALUES)
        elif op == "unknown" and isinstance(parent, dict):
            parent[f"{key}_typo"] = parent.pop(key)
        else:
            parent[key] = [parent[key]] if rng.random() < 0.5 else {"value": parent[key]}
    return data


def _cases(kind: str) -> list[tuple[str, bytes]]:
    base = BASES[kind]
    data = _absolute(yaml.safe_load(base.read_text()), base.parent)
    rng = random.Random(f"fuzz-{kind}")
    text = yaml.safe_dump(data, sort_keys=False)
    cases = [
        ("empty", b""),
        ("binary", bytes(rng.randrange(256) for _ in range(300))),
        ("a list", b"- 1\n- 2\n"),
        ("a scalar", b"42\n"),
        ("tabs", text.replace("  ", "\t", 3).encode()),
        ("cut", text[: len(text) // 2].encode() + b"\n  : ]["),
        ("utf-16", text.encode("utf-16")),
    ]
    for i in range(CASES_PER_KIND):
        mutated = _mutate(data, rng)
        cases.append((f"mutation {i}", yaml.safe_dump(mutated, sort_keys=False, allow_unicode=True).encode()))
    return cases


def _check(result, case: str) -> None:
    out = result.output
    assert result.exit_code in (0, 2), f"{case}: exit {result.exit_code}\n{out}\n{result.exception!r}"
    assert "Traceback" not in out, f"{case}: {out}"
    if result.exit_code == 2:
        assert out.startswith("error: ") and len(out.splitlines()) <= 25, f"{case}: {out}"


@pytest.mark.parametrize("kind", sorted(BASES))
def test_check_config_never_fails_with_a_traceback(kind, tmp_path):
    runner = CliRunner()
    n_valid = 0
    for case, raw in _cases(kind):
        path = tmp_path / "config.yaml"
        path.write_bytes(raw)
        result = runner.invoke(main, ["check-config", str(path), "--kind", kind])
        _check(result, f"{kind} {case}")
        n_valid += result.exit_code == 0
    assert n_valid < CASES_PER_KIND  # the mutations do break configs


@pytest.mark.parametrize("command", ["label", "run"])
def test_label_and_run_refuse_bad_configs_before_ray_starts(command, tmp_path, ray_must_not_start):
    runner = CliRunner()
    kind = "label" if command == "label" else "run"
    for case, raw in _cases(kind)[:25]:
        path = tmp_path / "config.yaml"
        path.write_bytes(raw)
        if runner.invoke(main, ["check-config", str(path), "--kind", kind]).exit_code == 0:
            continue  # a valid config would start a job
        _check(runner.invoke(main, [command, str(path)]), f"{command} {case}")
