"""serve_configs/ and cluster.yaml are checked against our models and Ray's own schemas."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from molal_ray.config import AnnotatorAppConfig, VLLMEngineConfig
from molal_ray.exceptions import ConfigError
from molal_ray.serve.app import deployment_options
from molal_ray.serve_config import load_serve_app_args
from tests.conftest import ROOT

SERVE_CONFIGS = sorted((ROOT / "serve_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_serve_configs_are_valid_for_serve_and_for_our_models(path: Path):
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(doc)  # what `serve deploy` accepts
    app = load_serve_app_args(path)
    assert isinstance(app, AnnotatorAppConfig) and app.annotators


def test_gpu_variant_asks_one_gpu_per_replica_and_autoscales():
    app = load_serve_app_args(ROOT / "serve_configs" / "annotators-gpu.yaml")
    for a in app.annotators:
        assert isinstance(a.engine, VLLMEngineConfig)
        opts = deployment_options(a)
        assert opts["ray_actor_options"]["num_gpus"] == 1
        assert opts["ray_actor_options"]["resources"] == {"annotator_slot": 1}  # what test_multinode places
        assert opts["autoscaling_config"]["max_replicas"] >= opts["autoscaling_config"]["min_replicas"]
        assert "num_replicas" not in opts


def test_cpu_variant_needs_no_gpu():
    app = load_serve_app_args(ROOT / "serve_configs" / "annotators-cpu.yaml")
    assert all(a.resources.num_gpus == 0 for a in app.annotators)


def test_bad_serve_args_are_reported_with_their_path(tmp_path):
    doc = yaml.safe_load((ROOT / "serve_configs" / "annotators-cpu.yaml").read_text())
    doc["applications"][0]["args"]["annotators"][0]["resources"]["num_gpus"] = -1
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"annotators\.0\.resources\.num_gpus: got -1"):
        load_serve_app_args(tmp_path / "s.yaml")


def test_cluster_yaml_passes_rays_schema_and_has_gpu_workers():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))  # as `ray up` does: fill defaults, then check the schema
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)
    # one annotator slot per GPU, as the multi-node test's worker nodes declare
    assert all(t["resources"].get("annotator_slot") == t["resources"]["GPU"] for t in gpu)
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)  # token authentication stays on
    assert any("molal" in c and "vllm" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize(
    "path",
    sorted([*ROOT.glob("examples/*/*.yaml"), *ROOT.glob("serve_configs/*.yaml")]),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_shipped_config_passes_check_config(path):
    from click.testing import CliRunner

    from molal_ray.cli import main

    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    kind = result.output.splitlines()[0].rsplit(" a valid ", 1)[1].removesuffix(" config")
    assert kind == (
        "serve-app" if path.parent.name == "serve_configs" else "run" if path.name == "loop.yaml" else "label"
    )


def test_check_config_names_the_bad_field(tmp_path):
    from click.testing import CliRunner

    from molal_ray.cli import main

    bad = tmp_path / "loop.yaml"
    bad.write_text(
        (ROOT / "examples/trec/loop.yaml")
        .read_text()
        .replace("strategy: max-entropy", "strategy: max-entropy\n  aggregator: poold")
    )
    result = CliRunner().invoke(main, ["check-config", str(bad)])
    assert result.exit_code == 2 and "aggregator" in result.output and "poold" in result.output


def test_the_examples_loop_and_label_configs_give_their_annotators_the_same_settings():
    """`predict --escalate examples/trec/label.yaml` after `run examples/trec/loop.yaml` copies the
    loop's answers to its gold rows only from annotators with the same settings (the README's
    journey); a prompt or sampling changed in one file only would silently ask them again."""
    from molal_ray.config import LabelJobConfig
    from molal_ray.config.loop import LoopJobConfig
    from molal_ray.serve.fingerprint import differences, fingerprints

    loop = LoopJobConfig.from_file(ROOT / "examples/trec/loop.yaml")
    label = LabelJobConfig.from_file(ROOT / "examples/trec/label.yaml")
    theirs, ours = fingerprints(loop.annotators, loop.task), fingerprints(label.annotators, label.task)
    assert sorted(theirs) == sorted(ours)
    assert {n: differences(ours[n], theirs[n], theirs="in the loop") for n in ours if ours[n] != theirs[n]} == {}
