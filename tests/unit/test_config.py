from __future__ import annotations

import pytest

from molal_ray.config import LabelJobConfig, SamplingConfig, TaskConfig
from molal_ray.exceptions import ConfigError
from tests.conftest import TREC, TREC_LABELS


def _base(tmp_path):
    return {
        "task": {"labels": ["a", "b"]},
        "annotators": [{"name": "m1", "engine": {"type": "replay", "path": "rec.parquet"}}],
        "pool": {"path": "pool.parquet"},
        "output": {"path": "out"},
    }


def test_example_config_loads_and_resolves_paths():
    cfg = LabelJobConfig.from_file(TREC / "label.yaml")
    assert cfg.task.labels == TREC_LABELS
    assert [a.name for a in cfg.annotators] == ["gemma", "llama", "mistral", "qwen", "yi"]
    assert cfg.pool.path == str(TREC / "pool.parquet")
    assert cfg.annotators[0].engine.path == str(TREC / "recording.parquet")
    assert cfg.annotators[0].sampling == SamplingConfig()  # paper defaults: T=10, 0.7, 0.9
    assert (
        cfg.annotators[0].sampling.n_samples,
        cfg.annotators[0].sampling.temperature,
        cfg.annotators[0].sampling.top_p,
    ) == (10, 0.7, 0.9)


def test_relative_paths_follow_the_config_file(tmp_path):
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_base(tmp_path)))
    cfg = LabelJobConfig.from_file(tmp_path / "c.yaml")
    assert cfg.pool.path == str(tmp_path / "pool.parquet")
    assert cfg.output.path == str(tmp_path / "out")


@pytest.mark.parametrize(
    "patch, where, expected",
    [
        (
            lambda d: d["annotators"][0].update(sampling={"temperature": -1}),
            "annotators.0.sampling.temperature",
            "greater than or equal to 0",
        ),
        (lambda d: d["annotators"][0]["engine"].update(type="gpt"), "annotators.0.engine", "'replay', 'hf', 'vllm'"),
        (lambda d: d["task"].update(labels=["a", "A"]), "task.labels", "distinct labels"),
        (lambda d: d["task"].update(prompt_template="no placeholder"), "task", "{text}"),
        (lambda d: d["pool"].update(format="xlsx"), "pool.format", "'auto', 'parquet', 'jsonl' or 'csv'"),
        (lambda d: d.update(colour="red"), "colour", "unknown field"),
        (lambda d: d["annotators"].append(dict(d["annotators"][0])), "annotators", "unique annotator names"),
        (
            lambda d: d["annotators"][0].update(resources={"autoscaling": {"min_replicas": 3, "max_replicas": 2}}),
            "annotators.0.resources.autoscaling",
            "min_replicas <= max_replicas",
        ),
    ],
)
def test_bad_values_name_field_value_and_what_is_allowed(tmp_path, patch, where, expected):
    data = _base(tmp_path)
    patch(data)
    with pytest.raises(ConfigError) as err:
        LabelJobConfig.from_dict(data, base_dir=tmp_path)
    msg = str(err.value)
    assert where in msg, msg
    assert expected in msg, msg


def test_bad_value_message_repeats_the_value(tmp_path):
    data = _base(tmp_path)
    data["annotators"][0]["sampling"] = {"top_p": 1.7}
    with pytest.raises(ConfigError, match=r"annotators\.0\.sampling\.top_p: got 1\.7; expected"):
        LabelJobConfig.from_dict(data)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected an existing YAML file"):
        LabelJobConfig.from_file(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        LabelJobConfig.from_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        LabelJobConfig.from_file(tmp_path / "list.yaml")


def test_task_render():
    t = TaskConfig(labels=["x", "y"], prompt_template="Pick {labels}: {text} {{literal}}")
    assert t.render("hello") == "Pick x, y: hello {literal}"


@pytest.mark.parametrize("kind", ["auto", "label", "run", "serve-app"])
def test_a_binary_or_empty_config_is_one_clear_line_from_check_config(tmp_path, kind):
    from click.testing import CliRunner

    from molal_ray.cli import main

    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary")
    result = CliRunner().invoke(main, ["check-config", "--kind", kind, str(binary)])
    assert result.exit_code == 2 and "not a text file" in result.output, result.output
    assert "Traceback" not in result.output
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = CliRunner().invoke(main, ["check-config", "--kind", kind, str(empty)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_trust_remote_code_only_through_its_own_field():
    from molal_ray.config import AnnotatorConfig

    with pytest.raises(ConfigError, match="engine_kwargs without trust_remote_code"):
        AnnotatorConfig.from_dict(
            {"name": "a", "engine": {"type": "vllm", "model": "m", "engine_kwargs": {"trust_remote_code": True}}}
        )
    ann = AnnotatorConfig.from_dict({"name": "a", "engine": {"type": "vllm", "model": "m", "trust_remote_code": True}})
    assert ann.engine.trust_remote_code
    assert not AnnotatorConfig.from_dict({"name": "a", "engine": {"type": "hf", "model": "m"}}).engine.trust_remote_code


def test_a_loop_cannot_query_more_rows_than_it_scores():
    from molal_ray.config.loop import LoopSettings

    with pytest.raises(ValueError, match=r"loop.subsample: got 40; expected at least query_size \(50\)"):
        LoopSettings(query_size=50, subsample=40)
    assert LoopSettings(query_size=50, subsample=None).subsample is None


def test_labelable_weighing_and_the_review_backend_are_checked_with_the_loop():
    import yaml

    from molal_ray.config.loop import LoopJobConfig
    from tests.conftest import TREC

    base = yaml.safe_load((TREC / "loop.yaml").read_text())

    def cfg(loop=None, classifier=None, review=None):  # type: ignore[no-untyped-def]
        data = {
            **base,
            "loop": {**base.get("loop", {}), **(loop or {})},
            "classifier": {**base["classifier"], **(classifier or {})},
        }
        if review is not None:
            data["review"] = review
        return LoopJobConfig.from_dict(data, base_dir=TREC)

    assert cfg({"labelable_weight": 2.0, "strategy": "max-entropy"}).loop.labelable_weight == 2.0
    with pytest.raises(ConfigError, match="no per-sample score"):
        cfg({"labelable_weight": 1.0, "strategy": "coreset"})
    with pytest.raises(ConfigError, match="needs classifier.mode 'head'"):
        cfg({"labelable_weight": 1.0, "strategy": "max-entropy"}, {"mode": "finetune"})
    assert cfg().review.backend == "files"
    ok = cfg(review={"backend": "label_studio", "url": "http://127.0.0.1:8080/", "project": "trec"})
    assert ok.review.url == "http://127.0.0.1:8080" and ok.review.token_env == "LABEL_STUDIO_API_KEY"
    for bad, message in [
        ({"backend": "label_studio"}, "needs url and project"),
        ({"backend": "label_studio", "url": "127.0.0.1:8080", "project": 3}, "expected an http"),
        (
            {"backend": "label_studio", "url": "http://h", "project": 3, "token_env": "tok-123.x"},
            "not the token itself",
        ),
        ({"backend": "s3"}, "review.backend"),
    ]:
        with pytest.raises(ConfigError, match=message):
            cfg(review=bad)


@pytest.mark.parametrize("backend", ["files", "simulated"])
def test_check_config_says_who_answers_for_people(tmp_path, backend):
    import yaml
    from click.testing import CliRunner

    from molal_ray.cli import main

    data = yaml.safe_load((TREC / "loop.yaml").read_text())
    for key in ("pool",):
        data[key]["path"] = str(TREC / data[key]["path"])
    data["gold"] = str(TREC / data["gold"])
    for a in data["annotators"]:
        a["engine"]["path"] = str(TREC / a["engine"]["path"])
    data["loop"]["human_per_round"] = 10
    data["review"] = {"backend": backend}
    data["output"]["path"] = str(tmp_path / "run")
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["check-config", str(tmp_path / "loop.yaml")])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("# people:"))
    assert f"10 of each round's queries go to review.backend {backend!r}" in line
    assert ("answered from the gold file" in line) == (backend == "simulated")
    assert ("the gold file never answers for them" in line) == (backend != "simulated")
